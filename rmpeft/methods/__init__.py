"""Fine-tuning methods, one module each, registered by name (see :mod:`rmpeft.methods.registry`).

Adding a method: a module here that registers it with ``@register_method("name", label="Name")``, its
import below, and ``conf/method/<name>.yaml``.
"""

from rmpeft.methods import adalora, adapter, bitfit, full, lora, masking, none, prefix, shira  # noqa: F401  (they register)
from rmpeft.methods.base import Method, MethodContext, MethodHandle
from rmpeft.methods.registry import METHODS, get_method, register_method

__all__ = ["METHODS", "Method", "MethodContext", "MethodHandle", "get_method", "register_method"]
