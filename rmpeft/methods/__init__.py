"""Fine-tuning methods, one module each, registered by name (see ``base.register_method``)."""

import importlib

from rmpeft.methods.base import (
    METHODS,
    Method,
    MethodContext,
    MethodHandle,
    get_method,
    register_method,
)

# Each entry is imported so that it registers itself. Modules that are not written yet are skipped.
_METHOD_MODULES = ["full", "masking", "lora", "adalora", "prefix", "adapter", "bitfit"]
for _name in _METHOD_MODULES:
    try:
        importlib.import_module(f"rmpeft.methods.{_name}")
    except ModuleNotFoundError as _e:  # pragma: no cover - only while a method module is absent
        if _e.name != f"rmpeft.methods.{_name}":
            raise

__all__ = ["METHODS", "Method", "MethodContext", "MethodHandle", "get_method", "register_method"]
