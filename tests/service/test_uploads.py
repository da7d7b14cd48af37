"""Uploaded datasets through the API: the happy paths, every kind of bad archive refused with nothing
written, streaming limits, the quota, tenants kept apart, and jobs naming an upload.

Real Redis under the session prefix; each test gets its own app, data directory and two fresh keys,
so "nothing written" can be checked exactly: no file under uploads/ and no record or byte count.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from jobs.datasets import INCOMING_DIR, UPLOADS_DIR, DatasetStore, owner_hash
from jobs.settings import Settings
from service.main import create_app
from service.uploads import UploadRefused, write_stream

CONTENT_TYPES = {"zip": "application/zip", "tar": "application/x-tar", "tar.gz": "application/gzip"}
TRAIN = {"model": "tiny_cnn", "epochs": 1, "batch_size": 4, "base_lr": 0.01, "max_lr": 0.05, "step_size": 1}

# ------------------------------------------------------------------------------------------ archives


def png(shade: int, size: int = 8, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (size, size), shade if mode == "L" else (shade, 255 - shade, 40)).save(out, "PNG")
    return out.getvalue()


def image_tree(classes: tuple[str, ...] = ("cat", "dog"), held_out: str = "test", per_class: int = 3) -> dict:
    """{member name: bytes}: train/<class>/<i>.png plus the held-out split with one image per class."""
    tree = {f"train/{c}/{i}.png": png(40 * k + i) for k, c in enumerate(classes) for i in range(per_class)}
    tree.update({f"{held_out}/{c}/0.png": png(40 * k + 9) for k, c in enumerate(classes)})
    return tree


@dataclass
class Special:
    """A member that is not a plain file: a link, or a name the builder must not clean up."""

    name: str
    kind: str  # "symlink", "hardlink" or "file"
    target: str = ""
    data: bytes = b""


def build_archive(kind: str, tree: dict[str, bytes], extra: tuple[Special, ...] = ()) -> bytes:
    """The bytes of a zip, tar or tar.gz holding `tree` (plus raw `extra` members, written verbatim)."""
    out = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(out, "w") as archive:
            for name, data in tree.items():
                archive.writestr(name, data)
            for member in extra:
                info = zipfile.ZipInfo(member.name)
                if member.kind == "symlink":
                    info.external_attr = (stat.S_IFLNK | 0o777) << 16
                    archive.writestr(info, member.target)
                else:
                    archive.writestr(info, member.data)
        return out.getvalue()
    with tarfile.open(fileobj=out, mode="w:gz" if kind == "tar.gz" else "w") as archive:
        for name, data in tree.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for member in extra:
            info = tarfile.TarInfo(member.name)
            if member.kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if member.kind == "symlink" else tarfile.LNKTYPE
                info.linkname = member.target
                archive.addfile(info)
            else:
                info.size = len(member.data)
                archive.addfile(info, io.BytesIO(member.data))
    return out.getvalue()


# ------------------------------------------------------------------------------------------ fixtures


@dataclass
class Env:
    client: TestClient
    me: dict[str, str]
    other: dict[str, str]
    owner: str
    settings: Settings

    @property
    def uploads(self) -> DatasetStore:
        return self.client.app.state.uploads

    def upload(self, body: bytes, kind: str = "zip", name: str = "pets", headers: dict | None = None):
        return self.client.post("/v1/datasets", params={"name": name}, content=body,
                                headers={**self.me, "Content-Type": CONTENT_TYPES[kind], **(headers or {})})

    def stored_files(self) -> list[Path]:
        root = Path(self.settings.data_dir) / "uploads"
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

    def assert_nothing_written(self) -> None:
        assert self.stored_files() == []
        assert self.uploads.list(self.owner) == [] and self.uploads.bytes_used(self.owner) == 0


@pytest.fixture
def make_env(keyed_app) -> Callable[..., Env]:
    """Factory: an app with its own data dir and two fresh keys; `make_env(max_upload_files=5)` sets limits."""
    return lambda **overrides: Env(*keyed_app(**overrides))


@pytest.fixture
def env(make_env) -> Env:
    return make_env()


# ------------------------------------------------------------------------------------------ happy paths


@pytest.mark.parametrize("kind, held_out", [("zip", "test"), ("tar", "test"), ("tar.gz", "test"), ("zip", "val")])
def test_upload_is_validated_stored_and_described(env: Env, kind: str, held_out: str) -> None:
    response = env.upload(build_archive(kind, image_tree(held_out=held_out)), kind)
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/datasets/{body['id']}"
    assert body["validation"] == "ok" and body["name"] == "pets" and body["format"] == kind
    assert body["classes"] == ["cat", "dog"] and body["held_out_split"] == held_out
    assert body["counts"] == {"train": {"cat": 3, "dog": 3}, held_out: {"cat": 1, "dog": 1}}
    assert (body["width"], body["height"], body["channels"], body["input_shape"]) == (8, 8, 3, [3, 8, 8])
    assert env.stored_files() == [Path(env.settings.data_dir) / "uploads" / owner_hash(env.owner)
                                  / f"{body['id']}.{kind}"]
    assert body["bytes"] == env.stored_files()[0].stat().st_size
    # the quota counts the archive and its decode cache: 8 images of 8x8x3 uint8 plus 8 int64 labels
    assert env.uploads.bytes_used(env.owner) == body["bytes"] + 8 * 8 * 8 * 3 + 8 * 8

    shown = env.client.get(f"/v1/datasets/{body['id']}", headers=env.me)
    assert shown.status_code == 200 and shown.json() == body
    listed = {d["name"]: d for d in env.client.get("/v1/datasets", headers=env.me).json()["items"]}
    assert listed[body["id"]]["source"] == "upload" and listed[body["id"]]["classes"] == ["cat", "dog"]
    assert listed["digits"]["source"] == "catalog"


def test_grayscale_and_a_wrapper_folder_are_accepted(env: Env) -> None:
    tree = {f"pets/{name}": png(i * 20, size=12, mode="L") for i, name in enumerate(image_tree())}
    body = env.upload(build_archive("tar.gz", tree), "tar.gz").json()
    assert (body["channels"], body["image_size"], body["classes"]) == (1, 12, ["cat", "dog"])


def test_mixed_sizes_and_modes_are_accepted_with_their_distribution(env: Env) -> None:
    tree = {**image_tree(), "train/cat/wide.png": png(5, size=40), "train/dog/gray.png": png(9, size=64, mode="L"),
            "test/dog/1.png": png(7, size=40)}
    response = env.upload(build_archive("zip", tree))
    assert response.status_code == 201, response.text
    shown = env.client.get(f"/v1/datasets/{response.json()['id']}", headers=env.me).json()
    sizes = {(s["width"], s["height"]): s["count"] for s in shown["sizes"]["most_common"]}
    assert sizes == {(8, 8): 8, (40, 40): 2, (64, 64): 1} and shown["sizes"]["distinct"] == 3
    assert shown["grayscale_converted_to_rgb"] == 1 and shown["channels"] == 3
    assert shown["input_shape"] == [3, 32, 32]  # the size mixed photos train at without a spec image_size


def test_upload_is_exempt_from_the_json_body_limit(make_env) -> None:
    env = make_env(max_body_bytes=1024)
    archive = build_archive("zip", image_tree(per_class=10))
    assert len(archive) > 1024
    assert env.upload(archive).status_code == 201
    small_json = env.client.post("/v1/jobs/train", content=b'{"x": "' + b"y" * 2000 + b'"}',
                                 headers={**env.me, "Content-Type": "application/json"})
    assert small_json.status_code == 413  # the JSON routes keep their limit


# ------------------------------------------------------------------------------------------ refusals

BAD = {  # name -> (archive kind, tree, extra members, expected problem)
    "dotdot": ("zip", image_tree(), (Special("train/cat/../../../evil.png", "file", data=png(1)),),
               "unsafe_member"),
    "dotdot_tar": ("tar", image_tree(), (Special("../evil.png", "file", data=png(1)),), "unsafe_member"),
    "absolute_path": ("tar", image_tree(), (Special("/tmp/evil.png", "file", data=png(1)),), "unsafe_member"),
    "absolute_path_zip": ("zip", image_tree(), (Special("/etc/evil.png", "file", data=png(1)),),
                          "unsafe_member"),
    "symlink": ("tar", image_tree(), (Special("train/cat/link.png", "symlink", "/etc/passwd"),),
                "unsafe_member"),
    "symlink_zip": ("zip", image_tree(), (Special("train/cat/link.png", "symlink", "/etc/passwd"),),
                    "unsafe_member"),
    "hardlink": ("tar", image_tree(), (Special("train/cat/hard.png", "hardlink", "train/cat/0.png"),),
                 "unsafe_member"),
    "non_image": ("zip", {**image_tree(), "train/cat/notes.txt": b"not a picture"}, (), "not_an_image"),
    "corrupt_image": ("tar", {**image_tree(), "train/dog/bad.png": png(3)[:-25]}, (), "unreadable_image"),
    "one_class": ("zip", image_tree(classes=("cat",)), (), "too_few_classes"),
    "class_missing_from_test": ("zip", {k: v for k, v in image_tree().items() if k != "test/dog/0.png"}, (),
                                "class_missing_from_test"),
    "no_train_split": ("zip", {k.replace("train/", "extra/"): v for k, v in image_tree().items()}, (),
                       "no_train_split"),
    "no_test_split": ("zip", {k: v for k, v in image_tree().items() if k.startswith("train/")}, (),
                      "no_test_split"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_archive_is_refused_and_nothing_written(env: Env, case: str) -> None:
    kind, tree, extra, problem = BAD[case]
    response = env.upload(build_archive(kind, tree, extra), kind)
    assert response.status_code == 422, response.text
    assert response.json()["problem"] == problem, response.json()
    env.assert_nothing_written()


def test_too_many_files_is_refused(make_env) -> None:
    env = make_env(max_upload_files=5)
    response = env.upload(build_archive("zip", image_tree()))
    assert (response.status_code, response.json()["problem"]) == (422, "too_many_files")
    assert "5" in response.json()["detail"]
    env.assert_nothing_written()


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
def test_too_large_is_413_naming_the_limit(make_env, chunked: bool) -> None:
    env = make_env(max_upload_bytes=2000)
    archive = build_archive("tar", image_tree())
    assert len(archive) > 2000
    body = (archive[i:i + 500] for i in range(0, len(archive), 500)) if chunked else archive
    response = env.client.post("/v1/datasets", content=body,
                               headers={**env.me, "Content-Type": "application/x-tar"})
    assert response.status_code == 413
    assert response.json()["problem"] == "too_large" and "2000-byte" in response.json()["detail"]
    env.assert_nothing_written()


def test_refusal_happens_mid_stream_without_reading_the_rest(tmp_path: Path) -> None:
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1000):  # 64 MB if it were all read
            pulled += 1
            yield b"\0" * 65536

    refusal = UploadRefused(413, "too_large", "over")
    with pytest.raises(UploadRefused):
        anyio.run(write_stream, body(), tmp_path / "part.zip", 200_000, refusal)
    assert pulled == 4  # the chunk that crossed 200 kB was the last one read
    assert (tmp_path / "part.zip").stat().st_size <= 200_000


def test_every_byte_counted_is_on_disk_before_the_next_chunk_is_read(tmp_path: Path) -> None:
    # small pieces, as a loaded socket delivers them: each must reach the file, not wait in a buffer
    path, seen = tmp_path / "part.zip", []

    async def body() -> AsyncIterator[bytes]:
        for size in (100, 3000, 65536, 7):
            yield b"\0" * size
            seen.append(path.stat().st_size)  # the write of what was just yielded has happened

    refusal = UploadRefused(413, "too_large", "over")
    assert anyio.run(write_stream, body(), path, 1 << 20, refusal) == 68_643
    assert seen == [100, 3100, 68_636, 68_643]


@pytest.mark.parametrize("content_type, body, status, problem", [
    ("application/octet-stream", b"PK\x03\x04", 415, "unsupported_type"),
    ("application/json", b"{}", 415, "unsupported_type"),
    ("application/gzip", "zip-archive", 422, "bad_archive"),
    ("application/zip", b"PK\x03\x04 then garbage" * 10, 422, "bad_archive"),
    ("application/x-tar", b"", 422, "empty"),
    ("application/zip", "corrupt-deflate", 422, "bad_archive"),
])
def test_unknown_or_mislabelled_archive_is_refused(env: Env, content_type: str, body, status: int,
                                                    problem: str) -> None:
    if body == "zip-archive":
        body = build_archive("zip", image_tree())
    elif body == "corrupt-deflate":  # zlib.error from inside zipfile, which clrcore.archives does not wrap
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in image_tree().items():
                archive.writestr(name, data)
        body = bytearray(out.getvalue())
        body[47:57] = b"\xff" * 10
        body = bytes(body)
    response = env.client.post("/v1/datasets", content=body, headers={**env.me, "Content-Type": content_type})
    assert (response.status_code, response.json()["problem"]) == (status, problem), response.text
    env.assert_nothing_written()


def test_quota_counts_stored_bytes_and_frees_on_delete(make_env) -> None:
    archive = build_archive("zip", image_tree())
    env = make_env(upload_quota_bytes=len(archive) + 8 * (8 * 8 * 3 + 8) + 100)  # archive + its decode cache
    first = env.upload(archive)
    assert first.status_code == 201
    refused = env.upload(archive)
    assert (refused.status_code, refused.json()["problem"]) == (413, "quota_exceeded"), refused.text
    assert "quota" in refused.json()["detail"]
    assert len(env.stored_files()) == 1 and len(env.uploads.list(env.owner)) == 1
    # the other key has its own quota
    assert env.client.post("/v1/datasets", content=archive,
                           headers={**env.other, "Content-Type": "application/zip"}).status_code == 201
    assert env.client.delete(f"/v1/datasets/{first.json()['id']}", headers=env.me).status_code == 204
    assert env.upload(archive).status_code == 201


def test_a_job_whose_new_decode_size_would_pass_the_quota_is_refused_naming_image_size(make_env) -> None:
    archive = build_archive("zip", image_tree())
    env = make_env(upload_quota_bytes=len(archive) + 8 * (8 * 8 * 3 + 8) + 100)  # archive + its own-size cache
    dataset_id = env.upload(archive).json()["id"]
    spec = {**TRAIN, "dataset": dataset_id}
    assert env.client.post("/v1/jobs/train", json=spec, headers=env.me).status_code == 202
    refused = env.client.post("/v1/jobs/train", json={**spec, "image_size": 64}, headers=env.me)
    assert refused.status_code == 422, refused.text
    error = refused.json()["detail"][0]
    assert error["loc"] == ["body", "image_size"] and "decode cache" in error["msg"] and "quota" in error["msg"]


# ------------------------------------------------------------------------------------------ tenants and jobs


def test_another_key_sees_nothing(env: Env) -> None:
    dataset_id = env.upload(build_archive("zip", image_tree())).json()["id"]
    assert env.client.get(f"/v1/datasets/{dataset_id}", headers=env.other).status_code == 404
    assert env.client.delete(f"/v1/datasets/{dataset_id}", headers=env.other).status_code == 404
    names = [d["name"] for d in env.client.get("/v1/datasets", headers=env.other).json()["items"]]
    assert dataset_id not in names
    job = env.client.post("/v1/jobs/train", json={**TRAIN, "dataset": dataset_id}, headers=env.other)
    assert job.status_code == 422 and job.json()["detail"][0]["loc"] == ["body", "dataset"]
    assert env.client.get(f"/v1/datasets/{dataset_id}", headers=env.me).status_code == 200
    assert env.client.get("/v1/datasets/../etc", headers=env.me).status_code == 404


def test_jobs_must_name_an_existing_upload(env: Env) -> None:
    for path, spec in (("train", TRAIN), ("range-test", {"model": "tiny_cnn", "num_iter": 10})):
        response = env.client.post(f"/v1/jobs/{path}", json={**spec, "dataset": "ds_doesnotexist1"},
                                   headers=env.me)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "dataset"]


def test_delete_refused_while_a_job_names_it_then_gone(env: Env) -> None:
    dataset_id = env.upload(build_archive("zip", image_tree())).json()["id"]
    job = env.client.post("/v1/jobs/train", json={**TRAIN, "dataset": dataset_id}, headers=env.me)
    assert job.status_code == 202, job.text
    assert job.json()["spec"]["dataset"] == dataset_id  # the stored spec stays as submitted
    job_id = job.json()["id"]

    conflict = env.client.delete(f"/v1/datasets/{dataset_id}", headers=env.me)
    assert conflict.status_code == 409 and job_id in conflict.json()["detail"]
    assert env.client.post(f"/v1/jobs/{job_id}/cancel", headers=env.me).json()["state"] == "cancelled"

    assert env.client.delete(f"/v1/datasets/{dataset_id}", headers=env.me).status_code == 204
    assert env.client.get(f"/v1/datasets/{dataset_id}", headers=env.me).status_code == 404
    assert env.client.delete(f"/v1/datasets/{dataset_id}", headers=env.me).status_code == 404
    env.assert_nothing_written()


def test_abandoned_upload_temp_files_are_swept_at_startup(api_settings) -> None:
    """An API process that died mid-upload leaves a temp file; the next start removes it (old ones only)."""
    incoming = Path(api_settings.data_dir) / UPLOADS_DIR / INCOMING_DIR
    incoming.mkdir(parents=True, exist_ok=True)
    old, fresh = incoming / "abandoned.zip", incoming / "in-progress.zip"
    old.write_bytes(b"x" * 10)
    fresh.write_bytes(b"y" * 10)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    with TestClient(create_app(api_settings)):
        pass
    assert not old.exists() and fresh.exists()
    fresh.unlink()
