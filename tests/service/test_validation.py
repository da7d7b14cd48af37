"""Bad specs get 422 naming the field; nothing a client sends produces a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.helpers import ALICE, RANGE_TEST, TRAIN


def _locs(response) -> list[list]:
    return [e["loc"] for e in response.json()["detail"]]


@pytest.mark.parametrize("path, body, loc, words", [
    ("train", {**TRAIN, "base_lr": 0.1, "max_lr": 0.01}, ["body", "max_lr"], "base_lr must be below max_lr"),
    ("train", {**TRAIN, "step_size": 0}, ["body", "step_size"], "greater than 0"),
    ("train", {**TRAIN, "step_size": -2}, ["body", "step_size"], "greater than 0"),
    ("train", {**TRAIN, "batch_size": 0}, ["body", "batch_size"], "greater than or equal to 1"),
    ("range-test", {**RANGE_TEST, "batch_size": -1}, ["body", "batch_size"], "greater than or equal to 1"),
    ("train", {**TRAIN, "dataset": "imagenet"}, ["body", "dataset"], "unknown dataset 'imagenet'"),
    ("range-test", {**RANGE_TEST, "model": "resnet9000"}, ["body", "model"], "unknown model 'resnet9000'"),
    ("train", {**TRAIN, "epochz": 3}, ["body", "epochz"], "Extra inputs are not permitted"),
    ("train", {**TRAIN, "optimizer": {"name": "sgd", "lr": 1}}, ["body", "optimizer", "lr"], "Extra inputs"),
    ("range-test", {**RANGE_TEST, "start_lr": 1.0, "end_lr": 0.1}, ["body", "end_lr"], "start_lr must be below end_lr"),
    ("range-test", {**RANGE_TEST, "kind": "train"}, ["body", "kind"], "'range_test'"),
    ("train", {**TRAIN, "preset": "nope"}, ["body", "preset"], "unknown preset 'nope'"),
    ("train", {**TRAIN, "dataset_path": "../../etc"}, ["body", "dataset_path"], "without '..'"),
    ("train", {**TRAIN, "optimizer": {"bn_bias_lr_scale": 0}}, ["body", "optimizer", "bn_bias_lr_scale"],
     "greater than or equal to 0.01"),
    ("train", {**TRAIN, "optimizer": {"lookahead": "often"}}, ["body", "optimizer", "lookahead"], "boolean"),
    ("train", {**TRAIN, "tta_translate": "yes please"}, ["body", "tta_translate"], "boolean"),
    ("train", {**TRAIN, "augment": {"flip_mode": "sometimes"}}, ["body", "augment", "flip_mode"],
     "'random' or 'alternate'"),
    # Server limits from Settings (defaults: 200 epochs, 5000 iterations, batch 4096).
    ("train", {**TRAIN, "epochs": 201}, ["body", "epochs"], "at most 200"),
    ("train", {**TRAIN, "batch_size": 5000}, ["body", "batch_size"], "at most 4096"),
    ("range-test", {**RANGE_TEST, "num_iter": 5001}, ["body", "num_iter"], "at most 5000"),
    ("train", {**TRAIN, "range_test": {"num_iter": 9000}}, ["body", "range_test", "num_iter"], "at most 5000"),
    ("train", {**TRAIN, "range_test": {"seeds": 6}}, ["body", "range_test", "seeds"], "less than or equal to 5"),
    ("train", {**TRAIN, "range_test": {"seeds": 0}}, ["body", "range_test", "seeds"], "greater than or equal to 1"),
    ("range-test", {**RANGE_TEST, "seeds": 9}, ["body", "seeds"], "less than or equal to 5"),
    ("train", {**TRAIN, "range_test": {"shared_decades": -1}}, ["body", "range_test", "shared_decades"],
     "greater than or equal to 0"),
    ("range-test", {**RANGE_TEST, "shared_decades": "two"}, ["body", "shared_decades"], "valid number"),
    ("train", {**TRAIN, "range_test": {"rule": "blog_base"}}, ["body", "range_test", "rule"], "'ours'"),
    ("train", {**TRAIN, "dataset": "imagefolder", "dataset_path": "uploads/0123abcd/ds_abcdefgh.zip"},
     ["body", "dataset_path"], "reserved"),
    ("train", {**TRAIN, "dataset": "imagefolder", "dataset_path": "./uploads/x.zip"}, ["body", "dataset_path"],
     "reserved"),
    ("range-test", {**RANGE_TEST, "dataset": "imagefolder", "dataset_path": "cifar/.cache/x.npz"},
     ["body", "dataset_path"], "reserved"),
    ("train", {**TRAIN, "dataset": "imagefolder", "dataset_path": "../etc/passwd"}, ["body", "dataset_path"],
     "without '..'"),
])
def test_invalid_spec_is_422_naming_the_field(client: TestClient, path: str, body: dict, loc: list,
                                              words: str) -> None:
    response = client.post(f"/v1/jobs/{path}", json=body, headers=ALICE)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(e["loc"] == loc and words in e["msg"] for e in errors), errors


def test_several_limits_are_reported_together(client: TestClient) -> None:
    response = client.post("/v1/jobs/train", json={**TRAIN, "epochs": 999, "batch_size": 8000}, headers=ALICE)
    assert response.status_code == 422
    assert sorted(map(tuple, _locs(response))) == [("body", "batch_size"), ("body", "epochs")]


GARBAGE: list[tuple[str, bytes | str]] = [
    ("bad json", b'{"dataset": '),
    ("json array", b"[1, 2, 3]"),
    ("json string", b'"train please"'),
    ("json null", b"null"),
    ("empty", b""),
    ("not utf-8", b'{"dataset": "\xff\xfe"}'),
    ("wrong types", b'{"batch_size": "many", "epochs": [1], "max_lr": {"a": 1}, "seed": true}'),
    ("huge int", b'{"epochs": 1' + b"0" * 400 + b"}"),
    ("huge float", b'{"max_lr": 1e400, "base_lr": -1e400}'),
    ("nan", b'{"max_lr": NaN, "step_size": Infinity}'),
    ("unicode", '{"dataset": "数据集\U0001f600", "model": "\u0000\u202e", "seed": "٣"}'.encode()),
    ("lone surrogate", b'{"dataset": "\\ud800"}'),
    ("deep nesting", b'{"optimizer": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("big key count", ("{" + ",".join(f'"k{i}": {i}' for i in range(3000)) + "}").encode()),
]


@pytest.mark.parametrize("path", ["train", "range-test"])
@pytest.mark.parametrize("name, body", GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_is_a_4xx_never_a_500(client: TestClient, path: str, name: str, body: bytes) -> None:
    response = client.post(f"/v1/jobs/{path}", content=body,
                           headers={**ALICE, "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")


def test_oversized_body_is_413(client: TestClient, api_settings) -> None:
    body = b'{"dataset": "' + b"x" * (api_settings.max_body_bytes + 10) + b'"}'
    response = client.post("/v1/jobs/train", content=body, headers={**ALICE, "Content-Type": "application/json"})
    assert response.status_code == 413


def test_wrong_content_type_is_4xx(client: TestClient) -> None:
    response = client.post("/v1/jobs/train", content=b"epochs=3", headers={
        **ALICE, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 422


def test_unicode_and_odd_headers_are_harmless(client: TestClient) -> None:
    headers = {**ALICE, "Idempotency-Key": "ключ-🔑".encode(), "X-Request-ID": ("é" * 300).encode(),
               "Last-Event-ID": b"\xff"}
    response = client.post("/v1/jobs/range-test", json=RANGE_TEST, headers=headers)
    assert response.status_code == 202
    assert len(response.headers["x-request-id"]) == 32  # an unsafe id is replaced, not echoed


def test_lone_surrogate_in_a_free_text_field_is_422(client: TestClient) -> None:
    body = b'{"dataset": "imagefolder", "dataset_path": "pics/\\ud800"}'
    response = client.post("/v1/jobs/range-test", content=body,
                           headers={**ALICE, "Content-Type": "application/json"})
    assert response.status_code == 422
