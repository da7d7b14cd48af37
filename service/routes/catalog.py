"""What can be trained: datasets and models from the torch-free catalog."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from clrcore import catalog
from service.deps import Owner

router = APIRouter(prefix="/v1", tags=["catalog"])


class DatasetOut(BaseModel):
    name: str
    description: str
    channels: int
    image_size: int
    input_shape: list[int] | None
    classes: list[str]
    offline: bool


class ModelOut(BaseModel):
    name: str
    description: str
    params_note: str
    tags: list[str]


class DatasetList(BaseModel):
    items: list[DatasetOut]


class ModelList(BaseModel):
    items: list[ModelOut]


@router.get("/datasets", response_model=DatasetList)
def list_datasets(owner: Owner) -> dict:
    """Built-in datasets with class names and input shapes (C, H, W; null where the files decide)."""
    return {"items": [catalog.DATASETS[name].to_dict() for name in catalog.dataset_names()]}


@router.get("/models", response_model=ModelList)
def list_models(owner: Owner) -> dict:
    """Model architectures a spec may name."""
    return {"items": [catalog.MODELS[name].to_dict() for name in catalog.model_names()]}
