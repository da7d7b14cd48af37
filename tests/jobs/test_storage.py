"""The object store interface against a real SeaweedFS (S3) and against the local folders."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from jobs.settings import Settings
from jobs.storage import LocalStore, ObjectStore, S3Store, StorageUnavailable, open_store, run_key
from tests.objectstore import StoreEndpoint


def _s3(server: StoreEndpoint, monkeypatch: pytest.MonkeyPatch, prefix: str) -> S3Store:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    settings = Settings(storage_url=f"s3://{server.bucket}/{prefix}", storage_timeout=3)
    store = open_store(settings)
    assert isinstance(store, S3Store)
    return store


@pytest.fixture(params=["s3", "local"])
def object_store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "artifacts", tmp_path / "data")
    server = request.getfixturevalue("object_store_server")
    return _s3(server, monkeypatch, f"t-{secrets.token_hex(4)}")


def test_put_list_read_delete_round_trip(object_store: ObjectStore, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(secrets.token_bytes(9 * 1024 * 1024 + 17))  # above the multipart threshold
    small = tmp_path / "report.json"
    small.write_text('{"accuracy": 0.9}')
    object_store.put_file(big, run_key("job1", "model.pt"))
    object_store.put_file(small, run_key("job1", "report.json"))
    object_store.put_file(small, run_key("job2", "report.json"))

    assert object_store.list(run_key("job1")) == [run_key("job1", "model.pt"), run_key("job1", "report.json")]
    assert object_store.size(run_key("job1", "model.pt")) == big.stat().st_size
    assert object_store.size(run_key("job1", "missing.png")) is None
    assert b"".join(object_store.iter_chunks(run_key("job1", "report.json"))) == small.read_bytes()
    copy = tmp_path / "out" / "model.pt"
    object_store.download_file(run_key("job1", "model.pt"), copy)
    assert copy.read_bytes() == big.read_bytes()
    with pytest.raises(FileNotFoundError):
        object_store.download_file(run_key("job1", "nope.pt"), tmp_path / "nope.pt")

    assert object_store.delete_prefix(run_key("job1")) == 2
    assert object_store.list(run_key("job1")) == []
    assert object_store.list(run_key("job2")) == [run_key("job2", "report.json")]  # its neighbour stays


def test_keys_cannot_leave_their_prefix(object_store: ObjectStore, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    for bad in ("../escape", "runs/../../x", "/abs", "runs//x"):
        with pytest.raises(ValueError):
            object_store.put_file(tmp_path / "f", bad)


def test_local_store_is_todays_folders(tmp_path: Path) -> None:
    """Unset CLR_STORAGE_URL: run folders stay in artifact_dir/<job>, uploads in data_dir/uploads."""
    settings = Settings(artifact_dir=tmp_path / "a", data_dir=tmp_path / "d")
    store = open_store(settings)
    assert isinstance(store, LocalStore) and not store.remote
    (tmp_path / "f").write_text("x")
    store.put_file(tmp_path / "f", run_key("j", "history.json"))
    store.put_file(tmp_path / "f", "uploads/owner/ds_x.zip")
    assert (tmp_path / "a" / "j" / "history.json").read_text() == "x"
    assert (tmp_path / "d" / "uploads" / "owner" / "ds_x.zip").read_text() == "x"


def test_presigned_url_serves_the_object(object_store_server: StoreEndpoint, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    store = _s3(object_store_server, monkeypatch, f"presign-{secrets.token_hex(4)}")
    (tmp_path / "m").write_bytes(b"weights")
    store.put_file(tmp_path / "m", run_key("j", "model.pt"))
    url = store.presign(run_key("j", "model.pt"), 60)
    assert url is not None and "Signature" in url
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.read() == b"weights"


def test_unreachable_store_is_one_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens: every call raises StorageUnavailable with a reason, quickly."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = open_store(Settings(storage_url="s3://b/p", s3_endpoint_url=f"http://127.0.0.1:{port}",
                                storage_timeout=1))
    (tmp_path / "f").write_text("x")
    for call in (lambda: store.put_file(tmp_path / "f", "runs/j/x"), lambda: store.list("runs/j"),
                 lambda: store.iter_chunks("runs/j/x"), lambda: store.size("runs/j/x"), store.check,
                 lambda: store.delete_prefix("runs/j")):
        with pytest.raises(StorageUnavailable, match="object store unavailable"):
            call()


def test_each_store_signs_with_the_credentials_of_its_own_time(
        object_store_server: StoreEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3's default session keeps the first AWS_* credentials it read for the whole process; a store
    opened later with other credentials (another store, rotated keys) must not sign with those."""
    good = _s3(object_store_server, monkeypatch, f"creds-{secrets.token_hex(4)}")
    assert good.list(run_key("j")) == []
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-" + object_store_server.access_key)
    stale = open_store(Settings(storage_url=f"s3://{object_store_server.bucket}/x", storage_timeout=3))
    with pytest.raises(StorageUnavailable):
        stale.list(run_key("j"))
