"""torch.compile, cached per process.

Compiling a net costs tens of seconds, far more than a fast preset trains. A worker process trains
the same few architectures again and again, so the compiled module is kept here and reused: a later
job of the same architecture copies its fresh weights into the kept module (same parameter objects,
so the compiled code's guards still hold and nothing recompiles), trains that, and copies the result
back into its own model. Each job still starts from its own seeded initialisation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from copy import deepcopy
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from clrcore.train_setup import TrainConfig

COMPILE_CACHE_SIZE = 4  # architectures kept compiled per process (each holds one copy of its weights)
_COMPILED: OrderedDict[tuple, tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]] = OrderedDict()


def compile_supported(device: torch.device) -> bool:
    """torch.compile is used on CUDA only: on a CPU its compile time dwarfs the short runs it speeds up."""
    return device.type == "cuda"


def compile_model(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile with static shapes: a train batch size and an eval batch size, each compiled once."""
    return torch.compile(module, dynamic=False)


def compile_key(model: nn.Module, config: TrainConfig) -> tuple:
    """What makes two models interchangeable for the compiled code: class, every tensor's shape and
    dtype, which parameters train, the device, the memory format and the precision."""
    tensors = tuple((name, tuple(t.shape), str(t.dtype)) for name, t in model.state_dict().items())
    trainable = tuple(p.requires_grad for p in model.parameters())
    return (type(model).__module__, type(model).__qualname__, tensors, trainable, str(config.device),
            config.channels_last, config.precision)


def compiled_forward(model: nn.Module, config: TrainConfig
                     ) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor], bool]:
    """(module to train, its compiled forward, whether it came from the cache) for `model`.

    The module is never `model` itself but a kept twin holding `model`'s current weights and buffers,
    so the caller's model is untouched until `train` copies the result back.
    """
    key = compile_key(model, config)
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        module, forward = _COMPILED[key]
        module.load_state_dict(model.state_dict())
        for param in module.parameters():
            param.grad = None
        return module, forward, True
    module = deepcopy(model)
    forward = compile_model(module)
    _COMPILED[key] = (module, forward)
    while len(_COMPILED) > COMPILE_CACHE_SIZE:
        _COMPILED.popitem(last=False)
    return module, forward, False


def clear_compile_cache() -> None:
    """Forget every kept compiled module (frees their weights)."""
    _COMPILED.clear()
