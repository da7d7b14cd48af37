"""Re-reading a job's stored range test with other settings: `POST /v1/jobs/{id}/suggest`.

The sweep's every step is kept in the run folder's range_test_log.csv; `clrcore.curve_file.resuggest`
reads it again with another rule, margin, skips or divergence factor, without re-running the sweep.
Numpy only: the API process stays free of torch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from clrcore.curve_file import resuggest
from clrcore.json_safe import json_safe
from clrcore.specs import Policy, parse_spec
from clrcore.suggest import ALL_RULES, CLIFF_MARGIN, DIVERGE_FACTOR, cliff_margin_for
from jobs.storage import run_key, store_for
from service.deps import OwnedJob, SettingsDep
from service.run_files import ARTIFACTS, run_file

router = APIRouter(prefix="/v1", tags=["jobs"])

RULES = tuple(rule for rule in ALL_RULES if rule != "blog_base")  # blog_base is the blog's base_lr, no max


class SuggestRequest(BaseModel):
    """Settings for one re-reading; every field has the sweep's default."""

    model_config = ConfigDict(extra="forbid")

    rule: str = Field("ours", description=f"whose pick becomes max_lr: one of {', '.join(RULES)}")
    skip_start: int = Field(0, ge=0, le=100_000, description="leading steps to leave out")
    skip_end: int = Field(0, ge=0, le=100_000, description="trailing steps to leave out")
    diverge_factor: float = Field(DIVERGE_FACTOR, gt=1, le=1000,
                                  description="the curve ends where the loss passes this times its best")
    cliff_margin: float | None = Field(None, gt=1, le=1000,
                                       description="ours: max_lr = the cliff / this (default the one learned "
                                       "for the job's net and optimizer, as the job read it)")
    policy: Policy = Field("triangular", description="the policy the bounds are for")

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        if value not in RULES:
            raise ValueError(f"unknown rule {value[:50]!r}; known: {', '.join(RULES)}")
        return value


_EXAMPLES: dict[str, Any] = {
    "ours": {"summary": "ours with a wider margin", "value": {"cliff_margin": 3.0}},
    "valley": {"summary": "fastai's valley, the first 5 steps left out",
               "value": {"rule": "valley", "skip_start": 5, "policy": "one_cycle"}},
}


def _job_margin(job: dict[str, Any]) -> float:
    """The margin the job itself read ours with: its net's and optimizer's, presets and defaults applied
    (the record keeps only the fields the caller set)."""
    try:
        spec = parse_spec(job.get("spec") or {})
    except ValueError:  # a record from an older spec: the margin every family but resnet_fast has
        return CLIFF_MARGIN
    return cliff_margin_for(spec.model, spec.optimizer.name)


@router.post("/jobs/{job_id}/suggest", responses={
    404: {"description": "unknown job, or it has no range_test_log.csv (yet)"}})
def suggest(job: OwnedJob, body: Annotated[SuggestRequest, Body(openapi_examples=_EXAMPLES)],
            settings: SettingsDep) -> dict[str, Any]:
    """Every rule's pick on the job's stored sweep, and the bounds from `rule`, with these settings."""
    relative = ARTIFACTS["range_test_log.csv"][0]
    missing = HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{relative} does not exist for this job (yet)")
    reading = body.model_dump()
    if reading["cliff_margin"] is None:
        reading["cliff_margin"] = _job_margin(job)
    objects = store_for(settings)
    if not objects.remote:
        path = run_file(settings, job["id"], relative)
        if path is None:
            raise missing
        return json_safe(resuggest(path, **reading))
    # Object store: the log (a few hundred KB at most) is fetched into a temporary file and read there;
    # a store that is down answers 503 through service.object_files' handler.
    with tempfile.TemporaryDirectory(prefix="clr-suggest-") as scratch:
        path = Path(scratch) / relative
        try:
            objects.download_file(run_key(job["id"], relative), path)
        except FileNotFoundError:
            raise missing from None
        return json_safe(resuggest(path, **reading))
