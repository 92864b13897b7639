"""The concrete sparse backends by name, and the checked lookup of one for a device."""

from __future__ import annotations

import torch

from rmpeft.errors import RmpeftError, unknown_choice
from rmpeft.sparse.base import SparseBackend
from rmpeft.sparse.dense import DenseBackend
from rmpeft.sparse.spops_backend import SpopsBackend
from rmpeft.sparse.torch_backend import TorchBackend
from rmpeft.sparse.triton_backend import TritonBackend

BACKEND_NAMES = ("auto", "torch", "spops", "triton", "dense")   # what `method.backend` accepts
CONCRETE_NAMES = BACKEND_NAMES[1:]                               # `auto` resolves to one of these

_BACKENDS: dict[str, SparseBackend] | None = None


def backends() -> dict[str, SparseBackend]:
    """Every concrete backend by name (available or not), with default settings; built once."""
    global _BACKENDS
    if _BACKENDS is None:
        _BACKENDS = {"torch": TorchBackend(), "spops": SpopsBackend(), "triton": TritonBackend(),
                     "dense": DenseBackend()}
    return _BACKENDS


def available_backends(device: torch.device | str) -> list[str]:
    """Names of the concrete backends that run on ``device``."""
    device = torch.device(device)
    return [n for n, b in backends().items() if b.unavailable_reason(device) is None]


def get_backend(name: str, device: torch.device | str) -> SparseBackend:
    """The backend ``name`` for ``device``; a one-line error when it is unknown or cannot run there."""
    device = torch.device(device)
    if name not in BACKEND_NAMES:
        raise unknown_choice("method.backend", name, BACKEND_NAMES)
    if name == "auto":
        raise ValueError("resolve 'auto' with rmpeft.sparse.select_backend")
    backend = backends()[name]
    reason = backend.unavailable_reason(device)
    if reason is not None:
        raise RmpeftError(f"method.backend '{name}' cannot run on {device.type}: {reason}; "
                          f"available here: {', '.join(available_backends(device))}")
    return backend
