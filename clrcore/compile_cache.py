"""torch.compile, cached per process.

Compiling a net costs tens of seconds, far more than a fast preset trains. A worker process trains
the same few architectures again and again, so the compiled module is kept here and reused: a later
job of the same architecture copies its fresh weights into the kept module (same parameter objects,
so the compiled code's guards still hold and nothing recompiles), trains that, and copies the result
back into its own model. Each job still starts from its own seeded initialisation.

A machine whose compiler toolchain is broken (Triton builds C at run time: it needs gcc, the Python
headers and libcuda) must not fail the job: the compiled forward falls back to the eager module on
the first compile error and stays eager (`CompiledForward`, `with_eager_fallback`). Compiled code can
also be carried between machines: `save_artifacts` and `load_artifacts` wrap torch's mega-cache, so a
second GPU session compiles in seconds.
"""

from __future__ import annotations

import gzip
import logging
from collections import OrderedDict
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import nn

if TYPE_CHECKING:
    from clrcore.train_setup import TrainConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

COMPILE_CACHE_SIZE = 4  # architectures kept compiled per process (each holds one copy of its weights)
# Modules in which a compile error counts as "the compiler failed", not "the model is wrong".
COMPILER_MODULES = ("torch._dynamo", "torch._inductor", "torch._functorch", "triton")


def is_compile_failure(err: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) came out of torch.compile's machinery."""
    while err is not None:
        if type(err).__module__.startswith(COMPILER_MODULES) or any(
                word in str(err).lower() for word in ("dynamo", "inductor", "triton")):
            return True
        err = err.__cause__ or err.__context__
    return False


class CompiledForward:
    """A compiled module's forward that runs the eager module instead once compiling has failed."""

    def __init__(self, module: nn.Module, compiled: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.module = module
        self.compiled = compiled
        self.failure: str | None = None  # one line: why this forward runs eager

    def fall_back(self, err: BaseException) -> None:
        self.failure = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        log.warning("torch.compile failed, training eager from here: %s", self.failure)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.failure is None:
            try:
                return self.compiled(x)
            except Exception as err:
                if not is_compile_failure(err):
                    raise
                self.fall_back(err)  # nothing ran: the forward raised while compiling
        return self.module(x)


def with_eager_fallback(forward: Callable[[torch.Tensor], torch.Tensor], step: Callable[[], T]) -> T:
    """Run a training step; if `forward` is compiled and the step's backward failed to compile, undo
    what the compiled forward did (BatchNorm statistics, gradients) and run the step again eager.

    For the first step of a run: the backward graph compiles there, on the first `loss.backward()`.
    """
    if not isinstance(forward, CompiledForward) or forward.failure is not None:
        return step()
    buffers = [b.detach().clone() for b in forward.module.buffers()]
    try:
        return step()
    except Exception as err:
        if not is_compile_failure(err):
            raise
        forward.fall_back(err)
        with torch.no_grad():
            for buffer, saved in zip(forward.module.buffers(), buffers, strict=True):
                buffer.copy_(saved)
        forward.module.zero_grad(set_to_none=True)
        return step()


_COMPILED: OrderedDict[tuple, tuple[nn.Module, CompiledForward]] = OrderedDict()


def compile_supported(device: torch.device) -> bool:
    """torch.compile is used on CUDA only: on a CPU its compile time dwarfs the short runs it speeds up."""
    return device.type == "cuda"


def compile_model(module: nn.Module, mode: str = "default") -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile with static shapes: a train batch size and an eval batch size, each compiled once.

    mode "reduce-overhead" adds CUDA graphs: a whole step's kernels replay in one launch, which is what
    pays at small batches (the blog's 64), where launching hundreds of kernels per step is the cost.
    """
    return torch.compile(module, dynamic=False, mode=mode)


def compile_key(model: nn.Module, config: TrainConfig) -> tuple:
    """What makes two models interchangeable for the compiled code: class, every tensor's shape and
    dtype, which parameters train, the device, the memory format and the precision."""
    tensors = tuple((name, tuple(t.shape), str(t.dtype)) for name, t in model.state_dict().items())
    trainable = tuple(p.requires_grad for p in model.parameters())
    return (type(model).__module__, type(model).__qualname__, tensors, trainable, str(config.device),
            config.channels_last, config.precision, config.compile_mode)


def compiled_forward(model: nn.Module, config: TrainConfig) -> tuple[nn.Module, CompiledForward, bool]:
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
    forward = CompiledForward(module, compile_model(module, config.compile_mode))
    _COMPILED[key] = (module, forward)
    while len(_COMPILED) > COMPILE_CACHE_SIZE:
        _COMPILED.popitem(last=False)
    return module, forward, False


def clear_compile_cache() -> None:
    """Forget every kept compiled module (frees their weights)."""
    _COMPILED.clear()


def save_artifacts(path: Path) -> int:
    """Write everything this process compiled so far (torch.compiler.save_cache_artifacts), gzipped,
    to `path`; the bytes written, 0 when nothing was compiled (then no file is written). Each call
    writes all of it again, so saving after every compiled item leaves the latest whole set."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None or not saved[0]:
        return 0
    data = gzip.compress(saved[0], compresslevel=6)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)  # a run killed mid-write leaves the previous whole file
    return len(data)


def load_artifacts(path: Path) -> bool:
    """Preload compiled code saved by `save_artifacts` on another machine; False when there is none.

    A stale or foreign file (another torch, another GPU) only costs the compile it would have saved.
    """
    if not path.is_file():
        return False
    try:
        return torch.compiler.load_cache_artifacts(gzip.decompress(path.read_bytes())) is not None
    except Exception as err:  # noqa: BLE001 - a bad cache file must never stop a run
        log.warning("ignoring compile artifacts in %s: %s", path, err)
        return False
