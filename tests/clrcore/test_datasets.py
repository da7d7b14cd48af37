"""Dataset registry, imagefolder trees and archives, archive safety, and the decode cache (offline)."""

from __future__ import annotations

import io
import os
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clrcore import catalog, image_tree
from clrcore.archives import ArchiveError, iter_image_members
from clrcore.datasets import (
    LOADERS,
    Dataset,
    DatasetError,
    Split,
    channel_stats,
    dataset_info,
    load_dataset,
    make_dataset,
    synthetic_dataset,
    with_train_subset,
)
from clrcore.image_tree import load_image_tree

CIFAR_ARCHIVE = Path("/work/shared/data/cifar10-jpg.tar.gz")


def png_bytes(value: int, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    colour = value if mode == "L" else (value, 255 - value, value // 2)
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def tree_files(classes=("cat", "dog", "eel"), held_out="test", per_class=3, mode="RGB") -> dict[str, bytes]:
    files = {}
    for split, n in (("train", per_class), (held_out, 2)):
        for k, cls in enumerate(classes):
            for i in range(n):
                files[f"{split}/{cls}/{i:03d}.png"] = png_bytes(40 * k + i, mode=mode)
    return files


def write_dir(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def write_any(tmp_path: Path, kind: str, files: dict[str, bytes]) -> Path:
    writers = {
        "dir": lambda: write_dir(tmp_path / "tree", files),
        "zip": lambda: write_zip(tmp_path / "tree.zip", files),
        "tar": lambda: write_tar(tmp_path / "tree.tar", files),
        "tar.gz": lambda: write_tar(tmp_path / "tree.tar.gz", files, "w:gz"),
    }
    return writers[kind]()


def load_folder(tmp_path: Path, path: Path) -> Dataset:
    return load_dataset("imagefolder", tmp_path, path=path.name, cache_dir=tmp_path / "cache")


# --- registry ----------------------------------------------------------------------------------


def test_registry_names_equal_catalog():
    assert sorted(LOADERS) == catalog.dataset_names()


def test_unknown_dataset_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("nope", tmp_path)


def test_digits_loads_offline_as_16x16_uint8(tmp_path):
    ds = load_dataset("digits", tmp_path)
    assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int64
    assert ds.train.images.shape[1:] == (1, 16, 16)
    assert len(ds.train) + len(ds.test) == 1797
    assert len(ds.test) == pytest.approx(0.2 * 1797, abs=1)
    assert ds.classes == list(catalog.DIGIT_CLASSES)
    assert set(np.unique(ds.test.labels)) == set(range(10))
    assert ds.train.images.max() == 255 and len(ds.mean) == len(ds.std) == 1
    assert load_dataset("digits", tmp_path).train.labels.tolist() == ds.train.labels.tolist()


def test_synthetic_default_and_parameters(tmp_path):
    ds = load_dataset("synthetic", tmp_path)
    assert ds.train.images.shape == (512, 3, 32, 32) and ds.test.images.shape == (256, 3, 32, 32)
    assert ds.classes == list(catalog.DATASETS["synthetic"].classes)
    small = synthetic_dataset(n_train=20, n_test=10, num_classes=4, image_size=16, channels=1)
    assert small.train.images.shape == (20, 1, 16, 16) and set(small.train.labels.tolist()) == {0, 1, 2, 3}


def test_train_subset_of_a_class_sorted_split_holds_every_class_and_repeats():
    labels = np.repeat(np.arange(10), 100)  # as an image folder loads: class by class
    split = Split(labels.astype(np.uint8).reshape(1000, 1, 1, 1), labels)  # each image shows its label
    data = make_dataset("sorted", split, split, [str(i) for i in range(10)])
    subset = with_train_subset(data, 50)
    assert len(subset.train.labels) == 50 and set(subset.train.labels.tolist()) == set(range(10))
    assert np.array_equal(with_train_subset(data, 50).train.images, subset.train.images)
    assert np.array_equal(subset.train.images.ravel(), subset.train.labels)  # images keep their labels
    assert with_train_subset(data, None) is data and with_train_subset(data, 5000) is data


def test_channel_stats_match_numpy():
    images = np.random.default_rng(0).integers(0, 256, (50, 3, 4, 4), dtype=np.uint8)
    mean, std = channel_stats(images)
    scaled = images / 255.0
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)))


def test_torchvision_set_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match=r"'mnist'.*not found.*download=True"):
        load_dataset("mnist", tmp_path)


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_existing_files(tmp_path):
    raw_dir = tmp_path / "mnist" / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        write_idx(raw_dir / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw_dir / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    ds = load_dataset("mnist", tmp_path)
    assert ds.train.images.shape == (6, 1, 28, 28) and ds.test.labels.tolist() == [0, 1, 2, 3]
    assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int64
    assert ds.classes == list(catalog.DIGIT_CLASSES)


def write_fake_mnist(tmp_path: Path) -> Path:
    """torchvision's MNIST layout under tmp_path/mnist; returns the raw folder."""
    raw_dir = tmp_path / "mnist" / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for prefix, n in (("train", 6), ("t10k", 4)):
        write_idx(raw_dir / f"{prefix}-images-idx3-ubyte", np.zeros((n, 28, 28)))
        write_idx(raw_dir / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return raw_dir


@pytest.mark.parametrize("damage", [lambda data: b"", lambda data: data[:100]], ids=["empty", "truncated"])
def test_corrupt_mnist_idx_file_is_named_corrupt(tmp_path, damage):
    images = write_fake_mnist(tmp_path) / "train-images-idx3-ubyte"
    images.write_bytes(damage(images.read_bytes()))
    with pytest.raises(DatasetError, match=r"'mnist'.*files under .*mnist are corrupt or incomplete: ") as caught:
        load_dataset("mnist", tmp_path)
    assert len(str(caught.value).splitlines()) == 1


def test_garbage_cifar10_batch_file_is_named_corrupt(tmp_path):
    batches = tmp_path / "cifar10" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        (batches / name).write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=r"'cifar10'.*corrupt or incomplete: Dataset not found or corrupted"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_missing_mentions_the_archive(tmp_path):
    with pytest.raises(DatasetError, match="cifar10-jpg.tar.gz"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_reads_the_jpeg_archive_layout(tmp_path):
    files = {name.replace("cat/", f"{c}/"): data
             for c in catalog.CIFAR10_CLASSES for name, data in tree_files(("cat",)).items()}
    write_tar(tmp_path / "cifar10-jpg.tar.gz", files, "w:gz")
    ds = load_dataset("cifar10", tmp_path)
    assert ds.classes == list(catalog.CIFAR10_CLASSES)
    assert ds.train.images.shape == (30, 3, 8, 8)


# --- imagefolder -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dir", "zip", "tar", "tar.gz"])
def test_imagefolder_from_tree_and_archives(tmp_path, kind):
    ds = load_folder(tmp_path, write_any(tmp_path, kind, tree_files()))
    assert ds.classes == ["cat", "dog", "eel"]
    assert ds.train.images.shape == (9, 3, 8, 8) and ds.test.images.shape == (6, 3, 8, 8)
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # pixel values survive: class k, image i was filled with red = 40k + i
    assert ds.train.images[3, 0, 0, 0] == 40 and ds.train.images[5, 0, 0, 0] == 42
    info = dataset_info(ds)
    assert info["input_shape"] == [3, 8, 8] and info["train_counts"] == {"cat": 3, "dog": 3, "eel": 3}


def test_imagefolder_val_split_and_wrapper_folder(tmp_path):
    files = {f"mydata/{name}": data for name, data in tree_files(held_out="val").items()}
    files["mydata/README.txt"] = b"not part of the layout"
    files["__MACOSX/mydata/train/cat/._000.png"] = b"resource fork"
    ds = load_folder(tmp_path, write_zip(tmp_path / "wrapped.zip", files))
    assert len(ds.test) == 6


def test_imagefolder_all_grayscale_gives_one_channel(tmp_path):
    ds = load_folder(tmp_path, write_any(tmp_path, "zip", tree_files(mode="L")))
    assert ds.train.images.shape[1] == 1


def test_imagefolder_mixed_modes_become_rgb(tmp_path):
    files = tree_files()
    files["train/cat/000.png"] = png_bytes(7, mode="L")
    ds = load_folder(tmp_path, write_any(tmp_path, "zip", files))
    assert ds.train.images.shape[1] == 3
    assert ds.train.images[0, :, 0, 0].tolist() == [7, 7, 7]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: {}, "no images"),
        (lambda f: {k: v for k, v in f.items() if not k.startswith("test/")}, "no 'test' or 'val'"),
        (lambda f: {k.replace("train/", "training/"): v for k, v in f.items()}, "no 'train' split"),
        (lambda f: {k: v for k, v in f.items() if "/cat/" in k}, "at least 2 classes"),
        (lambda f: {k: v for k, v in f.items() if k != "test/eel/000.png" and k != "test/eel/001.png"},
         "'eel' is in train but not in the test"),
        (lambda f: {**f, "train/dog/bad.png": b"\x89PNG not really"}, r"train/dog/bad\.png: not a readable"),
        (lambda f: {**f, "train/dog/cut.png": png_bytes(3, size=(64, 64))[:60]}, r"cut\.png: not a readable"),
        (lambda f: {**f, "test/cat/notes.txt": b"hello"}, r"test/cat/notes\.txt: not a readable image"),
        (lambda f: {**f, "train/eel/big.png": png_bytes(1, size=(9, 8))}, r"train/eel/big\.png is 9x8"),
    ],
    ids=["empty", "no-test", "no-train", "one-class", "class-missing-from-test", "corrupt", "truncated",
         "non-image", "mixed-sizes"],
)
def test_imagefolder_errors_say_which_and_why(tmp_path, change, message):
    path = write_any(tmp_path, "zip", change(tree_files()))
    with pytest.raises(DatasetError, match=message) as caught:
        load_folder(tmp_path, path)
    assert "dataset 'imagefolder': tree.zip" in str(caught.value)


def test_imagefolder_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset("imagefolder", tmp_path, path="absent.zip")
    with pytest.raises(DatasetError, match="needs a path"):
        load_dataset("imagefolder", tmp_path)


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_dataset("imagefolder", tmp_path, path="empty")


# --- archive safety ----------------------------------------------------------------------------


def tar_with(tmp_path: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as archive:
        for name, blob in tree_files().items():
            good = tarfile.TarInfo(name)
            good.size = len(blob)
            archive.addfile(good, io.BytesIO(blob))
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("train/cat/../../../etc/x.png"), "'..' in path"),
        (tarfile.TarInfo("/abs/train/cat/x.png"), "absolute path"),
        (special("train/cat/link.png", tarfile.SYMTYPE, "/etc/passwd"), "links are not allowed"),
        (special("train/cat/hard.png", tarfile.LNKTYPE, "train/cat/000.png"), "links are not allowed"),
        (special("train/cat/dev.png", tarfile.CHRTYPE), "not a regular file"),
        (special("train/cat/fifo.png", tarfile.FIFOTYPE), "not a regular file"),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "device", "fifo"],
)
def test_unsafe_tar_members_are_rejected(tmp_path, member, message):
    path = tar_with(tmp_path, member)
    with pytest.raises(DatasetError, match=message):
        load_folder(tmp_path, path)


@pytest.mark.parametrize(
    ("name", "message"),
    [("../train/cat/x.png", r"'\.\.' in path"), ("/train/cat/x.png", "absolute path"),
     ("C:\\train\\cat\\x.png", "absolute path")],
)
def test_unsafe_zip_names_are_rejected(tmp_path, name, message):
    files = {**tree_files(), name: png_bytes(1)}
    with pytest.raises(DatasetError, match=message):
        load_folder(tmp_path, write_zip(tmp_path / "evil.zip", files))


def test_zip_symlink_is_rejected(tmp_path):
    path = write_zip(tmp_path / "link.zip", tree_files())
    with zipfile.ZipFile(path, "a") as archive:
        info = zipfile.ZipInfo("train/cat/link.png")
        info.external_attr = (0o120777 << 16)
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(DatasetError, match="links are not allowed"):
        load_folder(tmp_path, path)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_directory_symlink_is_rejected(tmp_path):
    root = write_dir(tmp_path / "tree", tree_files())
    os.symlink("/etc/hostname", root / "train" / "cat" / "link.png")
    with pytest.raises(DatasetError, match="links are not allowed"):
        load_folder(tmp_path, root)


def test_member_limits(tmp_path):
    path = write_zip(tmp_path / "tree.zip", tree_files())
    with pytest.raises(ArchiveError, match="more than 5 members"):
        list(iter_image_members(path, max_members=5))
    with pytest.raises(ArchiveError, match="over the 10-byte limit"):
        list(iter_image_members(path, max_member_bytes=10))
    with pytest.raises(ArchiveError, match="bytes in all"):
        list(iter_image_members(path, max_total_bytes=200))


def test_iter_image_members_yields_layout(tmp_path):
    members = list(iter_image_members(write_tar(tmp_path / "t.tar", tree_files())))
    assert members[0][:3] == ("train", "cat", "000.png") and len(members) == 15


# --- decode cache ------------------------------------------------------------------------------


def test_cache_hit_returns_identical_arrays_without_decoding(tmp_path, monkeypatch):
    path = write_any(tmp_path, "tar.gz", tree_files(per_class=40))
    cache = tmp_path / "cache"
    start = time.perf_counter()
    first = load_image_tree(path, cache_dir=cache)
    first_s = time.perf_counter() - start
    monkeypatch.setattr(image_tree, "_decode_chunk", lambda items: pytest.fail("decoded on a cache hit"))
    start = time.perf_counter()
    second = load_image_tree(path, cache_dir=cache)
    second_s = time.perf_counter() - start
    assert [p.suffix for p in cache.iterdir()] == [".npz"]  # no temp files left behind
    np.testing.assert_array_equal(first.train.images, second.train.images)
    np.testing.assert_array_equal(first.test.labels, second.test.labels)
    assert (first.classes, first.mean, first.std) == (second.classes, second.mean, second.std)
    assert second_s < first_s


def test_cache_key_follows_the_file(tmp_path):
    path = write_any(tmp_path, "zip", tree_files())
    cache = tmp_path / "cache"
    load_image_tree(path, cache_dir=cache)
    write_zip(path, tree_files(classes=("ant", "bee")))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert load_image_tree(path, cache_dir=cache).classes == ["ant", "bee"]
    assert len(list(cache.iterdir())) == 1  # the stale cache of the old file is gone


def test_default_cache_dir_is_under_data_dir(tmp_path):
    write_any(tmp_path, "zip", tree_files())
    load_dataset("imagefolder", tmp_path, path="tree.zip")
    assert len(list((tmp_path / ".cache").glob("*.npz"))) == 1


def test_unreadable_cache_is_ignored(tmp_path):
    path = write_any(tmp_path, "zip", tree_files())
    cache = tmp_path / "cache"
    load_image_tree(path, cache_dir=cache)
    (file,) = cache.iterdir()
    for junk in (b"garbage", file.read_bytes()[:100], b""):
        file.write_bytes(junk)
        assert load_image_tree(path, cache_dir=cache).train.images.shape == (9, 3, 8, 8)
    np.savez(file, classes=np.asarray(["x"]))
    assert load_image_tree(path, cache_dir=cache).classes == ["cat", "dog", "eel"]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CLR_SLOW_TESTS") != "1" or not CIFAR_ARCHIVE.exists(),
                    reason="set CLR_SLOW_TESTS=1 (decodes 60,000 JPEGs)")
def test_real_cifar10_archive(tmp_path):
    ds = load_dataset("cifar10", CIFAR_ARCHIVE.parent, path=CIFAR_ARCHIVE.name, cache_dir=tmp_path)
    assert ds.train.images.shape == (50000, 3, 32, 32) and ds.test.images.shape == (10000, 3, 32, 32)
    assert np.bincount(ds.train.labels).tolist() == [5000] * 10
    start = time.perf_counter()
    again = load_dataset("cifar10", CIFAR_ARCHIVE.parent, path=CIFAR_ARCHIVE.name, cache_dir=tmp_path)
    assert time.perf_counter() - start < 1.0
    np.testing.assert_array_equal(again.test.images, ds.test.images)


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(image_tree, "MAX_IMAGE_PIXELS", 63)
    with pytest.raises(DatasetError, match=r"8x8 is over the 63-pixel limit"):
        load_folder(tmp_path, write_any(tmp_path, "zip", tree_files()))


def test_decoded_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(image_tree, "MAX_DECODED_BYTES", 1000)
    with pytest.raises(DatasetError, match="more than 1000 bytes of decoded images"):
        load_folder(tmp_path, write_any(tmp_path, "zip", tree_files()))


def test_parallel_decode_matches_serial_and_reports_bad_files(tmp_path, monkeypatch):
    monkeypatch.setattr(image_tree, "DECODE_CHUNK", 4)
    monkeypatch.setattr(image_tree, "PARALLEL_MIN_IMAGES", 8)
    path = write_any(tmp_path, "tar", tree_files(per_class=6))
    serial = load_image_tree(path, workers=1)
    parallel = load_image_tree(path, workers=2)
    np.testing.assert_array_equal(serial.train.images, parallel.train.images)
    np.testing.assert_array_equal(serial.test.labels, parallel.test.labels)
    bad = write_zip(tmp_path / "bad.zip", {**tree_files(per_class=6), "train/dog/zz.png": b"broken"})
    with pytest.raises(DatasetError, match=r"'imagefolder': bad\.zip: train/dog/zz\.png: not a readable"):
        load_image_tree(bad, workers=2)


def test_corrupt_zip_payload_is_a_dataset_error(tmp_path):
    """A zip whose member data is damaged (zlib.error inside zipfile) is reported, not a crash."""
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for split in ("train", "test"):
            for cls in ("a", "b"):
                img = tmp_path / "img.png"
                Image.new("L", (8, 8), color=7).save(img)
                zf.write(img, f"{split}/{cls}/x.png")
    raw = bytearray(archive.read_bytes())
    start = raw.index(b"train/a/x.png") + len(b"train/a/x.png")
    raw[start + 5:start + 40] = b"\xff" * 35  # damage the first member's deflate stream
    archive.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="bad.zip"):
        load_dataset("imagefolder", tmp_path, path="bad.zip")
