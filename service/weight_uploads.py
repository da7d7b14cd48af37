"""Uploaded weights: the checks of a safetensors file against an architecture, and of a spec naming one.

A tenant's file is untrusted input a worker will later load, so nothing is kept before it passed:
the body streams into a temp file (`service.uploads.write_stream`, refused mid-stream past the size
limit or the key's remaining quota), then its header is read and its byte ranges checked
(`clrcore.safetensors_header`: a pickle or a truncated file is refused here, not in the worker), then
every tensor's name and shape is compared with the architecture's state (`clrcore.state_shapes`,
plain data, so this process never imports torch). A head or stem of another shape (another class count,
other channels) is accepted and reported as `replaced`: fine-tuning puts a fresh head on anyway, and
the worker converts a stem for other input channels to the data's (`clrcore.weights.load_weights`).

`weights_errors` is the submit-time check of a spec whose `finetune.weights` names an upload.
"""

from __future__ import annotations

import math
from pathlib import Path

from clrcore import catalog, state_shapes
from clrcore.safetensors_header import WeightsError, read_header
from clrcore.specs import UPLOADED_WEIGHTS, RangeTestSpec, TrainSpec
from jobs.settings import Settings
from jobs.store import JobStore
from jobs.weights import WeightsSummary, WeightStore
from service.errors import field_error
from service.uploads import UploadRefused

CONTENT_TYPES = ("application/octet-stream", "application/vnd.safetensors")
MAX_LISTED_PROBLEMS = 20
# The largest catalog architecture's header is under 0.2 MB (efficientnet_v2_l: 1,548 tensors); a bigger one is refused
# before the API parses it.
MAX_UPLOAD_HEADER_BYTES = 4 * 2**20


class WeightsRefused(UploadRefused):
    """A refusal that names the offending tensor, and the first few problems of the file."""

    def __init__(self, problem: str, message: str, tensor: str | None, problems: list[dict] | None = None) -> None:
        super().__init__(422, problem, message)
        self.tensor, self.problems = tensor, problems or []


def check_content_type(content_type: str | None) -> None:
    base = (content_type or "").split(";", 1)[0].strip().lower()
    if base not in CONTENT_TYPES:
        raise UploadRefused(415, "unsupported_type", f"Content-Type {base or '(none)'!r}: send the safetensors "
                            "file itself as the body with application/octet-stream")


def check_architecture(architecture: str) -> None:
    if architecture not in catalog.MODELS or architecture not in state_shapes.architectures():
        raise UploadRefused(422, "unknown_architecture", f"architecture: unknown model {architecture!r} "
                            "(see GET /v1/models)")


def _refusal(errors: list[WeightsError]) -> WeightsRefused:
    first = errors[0]
    listed = [{"tensor": e.tensor, "problem": e.problem, "detail": str(e)} for e in errors[:MAX_LISTED_PROBLEMS]]
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return WeightsRefused(first.problem, f"{first}{more}", first.tensor, listed)


def inspect_weights(path: Path, architecture: str) -> WeightsSummary:
    """Read the header (byte ranges checked) and compare it with `architecture`; `WeightsRefused` naming
    the first offending tensor otherwise. Reads the header only: the tensors' bytes are never parsed."""
    try:
        header = read_header(path, check_offsets=True, max_header_bytes=MAX_UPLOAD_HEADER_BYTES)
    except WeightsError as err:
        raise _refusal([err]) from None
    if not header:
        raise WeightsRefused("no_tensors", "the file holds no tensors", None)
    problems = state_shapes.check_header(header, architecture)
    if problems:
        raise _refusal(problems)
    expected, _ = state_shapes.layout(architecture)
    return WeightsSummary(
        architecture=architecture, tensors=len(header),
        parameters=sum(math.prod(shape) for _, shape in header.values()),
        dtypes=sorted({dtype for dtype, _ in header.values()}),
        replaced=sorted(n for n, (_, shape) in header.items() if shape != expected[n]),
    )


def weights_errors(spec: RangeTestSpec | TrainSpec, owner: str, store: JobStore, settings: Settings) -> list[dict]:
    """Submit-time check: uploaded weights a spec names must be the caller's and for the spec's model."""
    weights = spec.finetune.weights if spec.finetune is not None else None
    if weights is None or not UPLOADED_WEIGHTS.match(weights):
        return []
    record = WeightStore(store.redis, store.prefix, settings.data_dir).owned(owner, weights)
    field = ("finetune", "weights")
    if record is None:
        return [field_error(field, f"no uploaded weights {weights!r} for this key (see GET /v1/weights)", weights)]
    if record["architecture"] != spec.model:
        return [field_error(field, f"weights {weights} are for {record['architecture']!r}, but the job's model "
                            f"is {spec.model!r}", weights)]
    return []
