"""Method names to method classes: ``@register_method("name", label="Name")`` adds one, :func:`get_method` makes one.

The registry is filled when :mod:`rmpeft.methods` imports its method modules.
"""

from __future__ import annotations

from typing import Callable

from rmpeft.errors import unknown_choice
from rmpeft.methods.base import Method

METHODS: dict[str, type[Method]] = {}


def register_method(name: str, label: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available under ``method.name=<name>``, shown as ``label`` in
    tables and figures (the paper's row label, for its methods)."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is registered twice ({METHODS[name].__name__}, {cls.__name__})")
        cls.name, cls.label = name, label
        METHODS[name] = cls
        return cls

    return deco


def get_method(name: str) -> Method:
    """Instantiate the registered method ``name`` (one line error listing the valid ones otherwise)."""
    if name not in METHODS:
        raise unknown_choice("method", name, METHODS)
    return METHODS[name]()
