"""What can be trained: datasets with class names and input shapes, the models and the presets."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.helpers import ALICE


def test_datasets_list_classes_and_input_shapes(client: TestClient) -> None:
    items = {d["name"]: d for d in client.get("/v1/datasets", headers=ALICE).json()["items"]}
    assert {"digits", "cifar10", "fashion_mnist", "mnist", "synthetic", "imagefolder"} <= set(items)
    assert items["digits"]["input_shape"] == [1, 16, 16] and items["digits"]["classes"][:3] == ["0", "1", "2"]
    assert items["cifar10"]["input_shape"] == [3, 32, 32] and "airplane" in items["cifar10"]["classes"]
    assert items["imagefolder"]["input_shape"] is None


def test_models_listed(client: TestClient) -> None:
    names = [m["name"] for m in client.get("/v1/models", headers=ALICE).json()["items"]]
    assert names == ["minigooglenet", "resnet_fast", "tiny_cnn"]


def test_presets_listed_with_descriptions_and_fields(client: TestClient) -> None:
    items = {p["name"]: p for p in client.get("/v1/presets", headers=ALICE).json()["items"]}
    assert set(items) == {"digits-demo", "cifar10-blog", "cifar10-blog-fast", "fashion_mnist-blog", "cifar10-fast",
                          "cifar10-minigooglenet-fast"}
    assert items["cifar10-blog-fast"]["fields"]["compile_mode"] == "reduce-overhead"
    assert all(p["description"] for p in items.values())
    blog = items["cifar10-blog"]["fields"]
    assert (blog["base_lr"], blog["max_lr"], blog["step_size"], blog["epochs"], blog["batch_size"]) == (
        1e-7, 1e-2, 8, 96, 64)
    assert items["cifar10-fast"]["fields"]["max_lr"] == "auto"


def test_every_listed_preset_is_a_valid_train_spec(client: TestClient) -> None:
    for preset in client.get("/v1/presets", headers=ALICE).json()["items"]:
        submitted = client.post("/v1/jobs/train", json={"preset": preset["name"]}, headers=ALICE)
        assert submitted.status_code == 202, (preset["name"], submitted.text)
        assert submitted.json()["spec"]["preset"] == preset["name"]
        assert client.post(f"/v1/jobs/{submitted.json()['id']}/cancel", headers=ALICE).status_code == 202


def test_presets_need_a_key(client: TestClient) -> None:
    assert client.get("/v1/presets").status_code == 401
