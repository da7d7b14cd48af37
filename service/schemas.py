"""Response models more than one router returns, kept out of the routers so no route imports another."""

from __future__ import annotations

from pydantic import BaseModel


class DatasetOut(BaseModel):
    name: str
    description: str
    channels: int
    image_size: int
    input_shape: list[int] | None
    classes: list[str]
    offline: bool
