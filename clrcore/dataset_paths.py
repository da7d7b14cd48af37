"""Which paths a job may name as its `dataset_path`: inside the data directory, never the directory
itself, never a hidden folder (decode caches, incoming uploads), never a reserved folder (the
service's uploads/), neither inside one nor containing one.

`dataset_path: "."` once made a worker walk the whole data directory, every tenant's uploads
included, and the job's error named another tenant's folder. The lexical check answers at submit
time without touching the disk; the resolved check runs where the files are (the worker), so a
symbolic link inside the data directory cannot lead around it.
"""

from __future__ import annotations

from pathlib import Path

from clrcore.datasets import DatasetError


def dataset_path_problem(relative: str, *, reserved: tuple[str, ...] = ()) -> str | None:
    """Why `relative` may not be a dataset path, judged by its text alone; None when it may."""
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        return "names the data directory itself; name a folder or archive inside it"
    if any(p.startswith(".") for p in parts):
        return "hidden folders (and '..') are reserved"
    if parts[0] in reserved:
        return f"'{parts[0]}/' is reserved; name an uploaded dataset by its id"
    return None


def resolve_dataset_path(data_dir: Path, relative: str, *, reserved: tuple[str, ...] = ()) -> Path:
    """The path `relative` names under `data_dir`, links resolved; `DatasetError` if it is not allowed.

    The error names `relative` as given, never the resolved path: that could be another tenant's.
    """
    problem = dataset_path_problem(relative, reserved=reserved)
    if problem is not None:
        raise DatasetError("dataset_path", f"{relative!r} {problem}")
    root = Path(data_dir).resolve()
    target = (root / relative).resolve()
    if target == root or root not in target.parents:
        raise DatasetError("dataset_path", f"{relative!r} leads outside the data directory, or to it")
    if any(part.startswith(".") for part in target.relative_to(root).parts):
        raise DatasetError("dataset_path", f"{relative!r} leads into a hidden folder")
    for name in reserved:
        kept = (root / name).resolve()
        if target == kept or kept in target.parents or target in kept.parents:
            raise DatasetError("dataset_path", f"{relative!r} leads into '{name}/', which is reserved")
    return target
