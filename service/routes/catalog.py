"""What can be trained: models from the torch-free catalog and the named presets.

`GET /v1/datasets` lives in `service/routes/datasets.py`, which merges the catalog with the caller's uploads;
the dataset entry shape is `service.schemas.DatasetOut`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from clrcore import catalog
from clrcore.presets import DESCRIPTIONS, PRESETS
from service.deps import Owner

router = APIRouter(prefix="/v1", tags=["catalog"])


class ModelOut(BaseModel):
    name: str
    description: str
    params_note: str
    tags: list[str]


class ModelList(BaseModel):
    items: list[ModelOut]


class PresetOut(BaseModel):
    name: str
    description: str
    fields: dict[str, Any] = Field(description="the spec fields it sets; a request's own fields win")


class PresetList(BaseModel):
    items: list[PresetOut]


@router.get("/presets", response_model=PresetList)
def list_presets(owner: Owner) -> dict:
    """Named recipes a training spec may start from (`"preset": name`)."""
    return {"items": [{"name": name, "description": DESCRIPTIONS[name], "fields": fields}
                      for name, fields in sorted(PRESETS.items())]}


@router.get("/models", response_model=ModelList)
def list_models(owner: Owner) -> dict:
    """Model architectures a spec may name."""
    return {"items": [catalog.MODELS[name].to_dict() for name in catalog.model_names()]}
