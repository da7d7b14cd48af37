"""Fine-tuning: a new head, a body frozen for the first epochs, and discriminative LRs per layer group.

fastai's recipe (`fit_one_cycle(..., slice(lo, hi))`): the parameters are cut into layer groups in
network order, the head last; the groups' LRs are spread log-linearly from `hi / body_lr_divisor` (the
first body group) to `hi` (the head). Here each group's LR is the scheduled LR times its `lr_scale`
(the head's scale is 1), so the schedule, the range test and the recipe all work on the head's LR and
the ratios stay fixed: the range test sweeps the head's LR and every group moves with it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clrcore.zoo import classifier_head, replace_head

GROUPS_ATTR = "_clr_layer_groups"  # set on the model: [(scale, [parameters]), ...], head first
FREEZE_ATTR = "_clr_freeze_epochs"


def layer_scales(groups: int, body_lr_divisor: float) -> list[float]:
    """LR multipliers from the first body group to the head: log-linear, body / divisor .. head 1."""
    if groups == 1:
        return [1.0]
    return [body_lr_divisor ** (-(groups - 1 - i) / (groups - 1)) for i in range(groups)]


def split_layer_groups(model: nn.Module, groups: int) -> list[list[nn.Parameter]]:
    """The parameters cut into `groups` in network order: the head (last Linear) alone last, the body
    into `groups - 1` runs of about equal parameter count (so a ResNet's stem and early stages share
    one group and its last stage gets another, as fastai's splits do)."""
    _, _, head = classifier_head(model)
    head_ids = {id(p) for p in head.parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    parts: list[list[nn.Parameter]] = [[] for _ in range(max(groups - 1, 0))]
    if parts:
        total = sum(p.numel() for p in body) or 1
        seen = 0
        for p in body:
            index = min(int(seen * len(parts) / total), len(parts) - 1)
            parts[index].append(p)
            seen += p.numel()
    return [part for part in parts if part] + [list(head.parameters())]


def prepare(model: nn.Module, num_classes: int, *, groups: int, body_lr_divisor: float, freeze_epochs: int,
            new_head: bool = True) -> nn.Module:
    """Replace the head (when `new_head`) and record the layer groups and scales on the model.

    `build_optimizer` reads them through `scale_param_groups`, the trainer through `set_frozen`.
    """
    if new_head:
        replace_head(model, num_classes)
    parts = split_layer_groups(model, groups)
    scales = layer_scales(len(parts), body_lr_divisor)
    setattr(model, GROUPS_ATTR, list(zip(scales, parts, strict=True)))
    setattr(model, FREEZE_ATTR, freeze_epochs)
    return model


def layer_groups(model: nn.Module) -> list[tuple[float, list[nn.Parameter]]] | None:
    return getattr(model, GROUPS_ATTR, None)


def scale_param_groups(model: nn.Module, groups: list[dict[str, Any]], lr: float) -> list[dict[str, Any]]:
    """The optimizer's param groups split by layer group, each `lr_scale` and `lr` times its scale.

    `lr` is the optimizer's default LR (a group without its own); the range test reads the groups'
    ratios from their initial LRs, the schedule from `lr_scale`.

    Head groups come first: the range test sweeps group 0's LR and keeps the others' ratios to it.
    A model without layer groups gets `groups` back unchanged.
    """
    layers = layer_groups(model)
    if not layers:
        return groups
    scale_of = {id(p): scale for scale, params in layers for p in params}
    out: list[dict[str, Any]] = []
    for scale in sorted({scale for scale, _ in layers}, reverse=True):
        for group in groups:
            params = [p for p in group["params"] if scale_of.get(id(p), 1.0) == scale]
            if not params:
                continue
            base = group.get("lr_scale", 1.0)
            out.append({**group, "params": params, "lr_scale": base * scale,
                        "lr": group.get("lr", lr) * scale})
    return out


def frozen_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The body's parameters (every group but the head)."""
    layers = layer_groups(model) or []
    return [p for _, params in layers[:-1] for p in params]


def thaw(model: nn.Module) -> None:
    """Unfreeze the body (before building an optimizer, which takes trainable parameters only)."""
    for p in frozen_parameters(model):
        p.requires_grad_(True)


def set_frozen(model: nn.Module, epoch: int) -> bool:
    """Freeze the body in epochs before the model's `freeze_epochs`, unfreeze it after; returns frozen.

    A frozen parameter gets no gradient, so the optimizer skips it (no update, no weight decay).
    BatchNorm running statistics in the body still follow the new data, as in fastai.
    """
    frozen = epoch < getattr(model, FREEZE_ATTR, 0)
    for p in frozen_parameters(model):
        p.requires_grad_(not frozen)
    return frozen


def group_bounds(model: nn.Module, base_lr: float, max_lr: float) -> list[dict[str, Any]]:
    """Per layer group, the bounds the schedule gives it (the head's bounds times the group's scale)."""
    layers = layer_groups(model)
    if not layers:
        return []
    names = {id(p): name for name, p in model.named_parameters()}
    out = []
    for index, (scale, params) in enumerate(layers):
        last = index == len(layers) - 1
        out.append({"group": "head" if last else f"body{index}", "lr_scale": scale,
                    "base_lr": base_lr * scale, "max_lr": max_lr * scale,
                    "first": names.get(id(params[0]), "?"), "parameters": sum(p.numel() for p in params)})
    return out


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameters_snapshot(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]
