"""Named training recipes as plain data (torch-free: the API expands them while validating).

Each value is a partial `TrainSpec`; fields a request gives explicitly win over the preset's.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default: digits on the CPU in seconds, bounds read off the range test.
    "digits-demo": {
        "dataset": "digits", "model": "tiny_cnn", "batch_size": 64, "epochs": 12,
        "policy": "triangular", "max_lr": "auto", "step_size": 3, "step_unit": "epochs",
        "augment": {"translate": 1, "flip": False},
        "range_test": {"start_lr": 1e-5, "end_lr": 10.0, "num_iter": 60},
    },
    # The Keras blog's CIFAR-10 recipe as published: triangular 1e-7..1e-2, step 8 epochs, 96 epochs.
    "cifar10-blog": {
        "dataset": "cifar10", "model": "minigooglenet", "batch_size": 64, "epochs": 96,
        "policy": "triangular", "base_lr": 1e-7, "max_lr": 1e-2, "step_size": 8, "step_unit": "epochs",
        "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4},
        "augment": {"translate": 3, "flip": True}, "precision": "fp32",
    },
    # The blog's Fashion-MNIST recipe: triangular 1e-5..1e-2 read off a 1e-10..1e1 range test.
    "fashion_mnist-blog": {
        "dataset": "fashion_mnist", "model": "minigooglenet", "batch_size": 64, "epochs": 48,
        "policy": "triangular", "base_lr": 1e-5, "max_lr": 1e-2, "step_size": 8, "step_unit": "epochs",
        "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4},
        "augment": {"translate": 3, "flip": True}, "precision": "fp32",
        "range_test": {"start_lr": 1e-10, "end_lr": 10.0, "num_iter": 200},
    },
    # Fast residual net, one-cycle with bounds from the range test, label smoothing and flip TTA.
    "cifar10-fast": {
        "dataset": "cifar10", "model": "resnet_fast", "batch_size": 512, "epochs": 10,
        "policy": "one_cycle", "max_lr": "auto", "pct_start": 0.25, "anneal": "linear",
        "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "label_smoothing": 0.2, "tta_flip": True, "augment": {"translate": 2, "flip": True},
        "range_test": {"start_lr": 1e-4, "end_lr": 10.0, "num_iter": 200},
    },
    # MiniGoogLeNet with the fast mechanics, for a like-for-like comparison with the blog.
    "cifar10-minigooglenet-fast": {
        "dataset": "cifar10", "model": "minigooglenet", "batch_size": 512, "epochs": 15,
        "policy": "triangular", "max_lr": "auto", "step_size": 7.5, "step_unit": "epochs",
        "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "label_smoothing": 0.1, "tta_flip": True, "augment": {"translate": 2, "flip": True},
        "range_test": {"start_lr": 1e-4, "end_lr": 10.0, "num_iter": 200},
    },
}
