"""Every preset validates into a TrainSpec and runs through `run_job` (CPU, tiny generated data)."""

from pathlib import Path

import pytest

from clrcore import datasets
from clrcore.presets import DESCRIPTIONS, PRESETS
from clrcore.runs import run_job
from clrcore.specs import TrainSpec

# What shrinks a preset to a smoke run: the preset's model, schedule, optimizer, normalisation and
# augmentation stay; the data (images of half the side, a small test split), epochs, batch and sweep
# length shrink. The nets pool adaptively, so the half-size images take the preset's own model.
TINY = {"dataset": "synthetic", "train_subset": 64, "epochs": 1, "batch_size": 16, "device": "cpu",
        "range_test": {"start_lr": 1e-4, "end_lr": 10.0, "num_iter": 10}}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_validates_into_a_train_spec(name: str) -> None:
    spec = TrainSpec(preset=name)
    for key, value in PRESETS[name].items():
        dumped = spec.model_dump()[key]
        assert dumped == value or (isinstance(value, dict) and value.items() <= dumped.items()), key


def test_blog_presets_are_the_published_recipes() -> None:
    blog = TrainSpec(preset="cifar10-blog")
    assert (blog.base_lr, blog.max_lr, blog.step_size, blog.step_unit) == (1e-7, 1e-2, 8, "epochs")
    assert (blog.epochs, blog.batch_size, blog.policy, blog.normalize) == (96, 64, "triangular", "pixel_mean")
    assert (blog.optimizer.momentum, blog.optimizer.nesterov) == (0.9, False)
    assert (blog.augment.translate, blog.augment.flip) == (3, True)  # 10 % of 32 px, and flips
    fashion = TrainSpec(preset="fashion_mnist-blog")
    assert (fashion.base_lr, fashion.max_lr, fashion.epochs, fashion.batch_size) == (1e-5, 1e-2, 48, 64)
    assert (fashion.range_test.start_lr, fashion.range_test.end_lr) == (1e-10, 10.0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_runs_through_run_job_on_tiny_data(name: str, tmp_path: Path, monkeypatch) -> None:
    channels, size = (1, 14) if PRESETS[name]["dataset"] == "fashion_mnist" else (3, 16)  # half the preset's
    monkeypatch.setitem(datasets.LOADERS, "synthetic", lambda *_: datasets.synthetic_dataset(
        n_train=64, n_test=32, channels=channels, image_size=size))
    spec = TrainSpec(preset=name, **TINY)
    summary = run_job(spec, tmp_path, data_dir=tmp_path)
    assert summary["epochs_run"] == 1 and 0.0 <= summary["accuracy"] <= 1.0
    assert (tmp_path / "report.json").exists() and (tmp_path / "model.pt").exists()
    assert (tmp_path / "range_test.json").exists() == (PRESETS[name].get("max_lr") == "auto")


def test_request_fields_override_a_preset_field_by_field() -> None:
    spec = TrainSpec(preset="cifar10-blog", optimizer={"momentum": 0.95}, epochs=3)
    assert spec.optimizer.momentum == 0.95 and spec.optimizer.name == "sgd"  # the rest of the preset stays
    assert spec.epochs == 3 and spec.max_lr == PRESETS["cifar10-blog"]["max_lr"]


def test_every_preset_has_a_one_line_description() -> None:
    assert set(DESCRIPTIONS) == set(PRESETS)
    assert all(text and "\n" not in text for text in DESCRIPTIONS.values())


def test_blog_fast_is_the_blog_recipe_compiled_with_cuda_graphs_in_bf16() -> None:
    fast, blog = TrainSpec(preset="cifar10-blog-fast").model_dump(), TrainSpec(preset="cifar10-blog").model_dump()
    speed = {"preset", "precision", "compile", "compile_mode"}
    assert {k: v for k, v in fast.items() if k not in speed} == {k: v for k, v in blog.items() if k not in speed}
    assert (fast["precision"], fast["compile"], fast["compile_mode"]) == ("auto", True, "reduce-overhead")
    assert (blog["precision"], blog["compile"], blog["compile_mode"]) == ("fp32", False, "default")
