"""What can be trained: datasets with class names and input shapes, and the models."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.service.conftest import ALICE


def test_datasets_list_classes_and_input_shapes(client: TestClient) -> None:
    items = {d["name"]: d for d in client.get("/v1/datasets", headers=ALICE).json()["items"]}
    assert {"digits", "cifar10", "fashion_mnist", "mnist", "synthetic", "imagefolder"} <= set(items)
    assert items["digits"]["input_shape"] == [1, 16, 16] and items["digits"]["classes"][:3] == ["0", "1", "2"]
    assert items["cifar10"]["input_shape"] == [3, 32, 32] and "airplane" in items["cifar10"]["classes"]
    assert items["imagefolder"]["input_shape"] is None


def test_models_listed(client: TestClient) -> None:
    names = [m["name"] for m in client.get("/v1/models", headers=ALICE).json()["items"]]
    assert names == ["minigooglenet", "resnet_fast", "tiny_cnn"]
