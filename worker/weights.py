"""Uploaded weights inside a worker: a spec's `finetune.weights: wt_...` becomes a local safetensors file.

The record is read again here, not trusted from submit time: the weights could have been deleted since,
or (a spec edited by hand in Redis) belong to another key or architecture; the job then fails with that
reason. Local mode reads the file where the API put it; store mode fetches it into the worker's
bounded cache, keyed by content hash like the datasets (`worker.dataset_cache`), so weights used by
many jobs are downloaded once per worker. clrcore loads it with safetensors, never `torch.load`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from clrcore.safetensors_header import WeightsError
from clrcore.specs import UPLOADED_WEIGHTS
from jobs.store import JobStore
from jobs.weights import EXT, WeightStore
from worker.dataset_cache import DatasetCache, Fetched

log = logging.getLogger(__name__)


def uploaded_weights_id(spec: dict) -> str | None:
    """The uploaded weights a spec names, if any."""
    weights = (spec.get("finetune") or {}).get("weights")
    return weights if isinstance(weights, str) and UPLOADED_WEIGHTS.match(weights) else None


def _record(spec: dict, owner: str, store: JobStore, data_dir: Path) -> dict:
    weights_id = uploaded_weights_id(spec)
    assert weights_id is not None
    record = WeightStore(store.redis, store.prefix, data_dir).owned(owner, weights_id)
    if record is None:
        raise WeightsError(f"finetune.weights {weights_id}: no such uploaded weights for this key (deleted?)")
    if record["architecture"] != spec.get("model"):
        raise WeightsError(f"finetune.weights {weights_id}: for {record['architecture']!r}, not the job's model "
                           f"{spec.get('model')!r}")
    return record


def resolve_weights(spec: dict, owner: str, store: JobStore, data_dir: Path,
                    cache: DatasetCache | None = None) -> tuple[Path | None, Fetched | None]:
    """The local file of the uploaded weights `spec` names (None when it names none), and what fetching
    it cost in store mode (`cache` given)."""
    if uploaded_weights_id(spec) is None:
        return None, None
    record = _record(spec, owner, store, data_dir)
    if cache is None:
        if "path" not in record:
            raise WeightsError(f"finetune.weights {record['id']}: stored in an object store, but this worker "
                               "has none configured")
        path = Path(data_dir) / record["path"]
        if not path.is_file():
            raise WeightsError(f"finetune.weights {record['id']}: the file is missing from the data directory")
        return path, None
    if "key" not in record or "sha256" not in record:
        raise WeightsError(f"finetune.weights {record['id']}: in a local data directory, not the object store")
    try:
        fetched = cache.fetch(record["key"], record["sha256"], EXT)
    except FileNotFoundError:
        raise WeightsError(f"finetune.weights {record['id']}: the file is missing from the object store") from None
    log.info("weights %s resolved to %s (cache %s)", record["id"], fetched.relative, "hit" if fetched.hit else "miss")
    return cache.data_dir / fetched.relative, fetched
