"""Putting a delta onto its base model: the base check, and a run built with the delta applied."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig
from torch import nn

from rmpeft.base_model import base_fingerprint
from rmpeft.methods.delta_format import Delta
from rmpeft.errors import RmpeftError
from rmpeft.methods import MethodContext, MethodHandle, get_method
from rmpeft.run import ApplyMethod, Run, build_run

log = logging.getLogger(__name__)


def check_base(delta: Delta, model_cfg: Any, cache_dir: str) -> dict[str, Any]:
    """The base fingerprint of ``model_cfg``; a one-line error when it is not the delta's base."""
    here = base_fingerprint(model_cfg, cache_dir)
    want = delta.meta["base"]
    by_name = "name" in (here.get("from"), want.get("from"))   # one side's weights are not cached here
    if by_name and (here["source"], here["revision"]) == (want.get("source"), want.get("revision")):
        if here["fingerprint"] != want["fingerprint"]:
            log.warning("base model %s is not cached yet: checked by its hub id and revision only", here["source"])
        return here
    if here["fingerprint"] != want["fingerprint"]:
        raise RmpeftError(f"delta {delta.path} was trained on base model '{want.get('name')}' (fingerprint "
                          f"{want['fingerprint']}), not on '{here['name']}' at {here['source']} (fingerprint "
                          f"{here['fingerprint']}); apply it to its own base model")
    return here


def applier(delta: Delta) -> ApplyMethod:
    """An ``apply_method`` for :func:`rmpeft.run.build_run` that applies ``delta``."""
    method = get_method(delta.method)

    def apply(model: nn.Module, cfg: Any, ctx: MethodContext) -> MethodHandle:
        return method.apply_delta(model, delta, ctx)

    return apply


def build_delta_run(delta: Delta, cfg: DictConfig, accelerator: Any = None) -> Run:
    """:func:`rmpeft.run.build_run` for ``cfg`` with the delta applied (after checking the base)."""
    if str(cfg.method.name) != delta.method:
        raise RmpeftError(f"method.name={cfg.method.name} but delta {delta.path} is a {delta.method} delta")
    check_base(delta, cfg.model, str(cfg.cache_dir))
    return build_run(cfg, accelerator, apply_method=applier(delta))
