"""The optimizer a run trains with: SGD or AdamW, parameter groups, and the fused/foreach choice.

The lookahead that can ride on top of it is `lookahead.py`'s.
"""

from __future__ import annotations

import torch
from torch import nn

from clrcore.train_setup import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW with weight decay on weights only.

    Decaying BatchNorm scales and biases pulls them towards zero for no regularising benefit, so every
    parameter with fewer than two dimensions goes to a group without decay. BatchNorm shifts get a
    group of their own whose `lr_scale` (config.bn_bias_lr_scale) multiplies the scheduled LR, so the
    schedule and the range test keep the ratio. On CUDA the fused kernels do the update in one launch;
    on CPU the default per-parameter loop is already the fastest. `config.optimizer_impl` overrides
    that choice ("fused", "foreach" or the per-parameter "loop").
    """
    scale = config.bn_bias_lr_scale
    own_group = scale != 1.0 or config.norm_shift_decay
    norm_shifts = {id(m.bias) for m in model.modules()
                   if own_group and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None}
    trainable = [p for p in model.parameters() if p.requires_grad]
    lr = config.schedule.lr(0)
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2 and id(p) not in norm_shifts], "weight_decay": 0.0}]
    if norm_shifts:  # only then: a default run's optimizer state keeps the two groups older checkpoints have
        shift_decay = config.weight_decay / scale if config.norm_shift_decay else 0.0  # same pull per step
        groups.append({"params": [p for p in trainable if id(p) in norm_shifts], "weight_decay": shift_decay,
                       "lr_scale": scale, "lr": lr * scale})
    impl = config.optimizer_impl
    if impl == "auto":
        impl = "fused" if config.device.type == "cuda" else "default"
    implementations = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False},
                       "default": {}}
    if impl not in implementations:
        raise ValueError(f"unknown optimizer_impl {config.optimizer_impl!r}; known: auto, fused, foreach, loop")
    fused = implementations[impl]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov, **fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(config.momentum, config.beta2), **fused)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; known: sgd, adamw")
