"""Every private Hydra (and hydra-submitit-launcher) API the sweep machinery relies on, in one place.

Hydra's public API composes one config at a time and launches only through ``@hydra.main``. Composing
10^4 configs fast and launching runs group by group needs a few of its internals; they are wrapped
here, and ``tests/test_sweep_hydra_internals.py`` fails loudly when an upgrade of the pinned versions
(``SUPPORTED``) moves or changes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hydra._internal.callbacks import Callbacks
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf

# Versions these wrappers were written against: (distribution, version prefix).
SUPPORTED = (("hydra-core", "1.3."), ("hydra-submitit-launcher", "1.2.0"))

__all__ = [
    "JobReturn", "JobStatus", "Override", "SUPPORTED", "apply_value_overrides", "group_has_options",
    "instantiate_launcher", "is_submitit_launcher", "new_override_parser", "singleton_state",
    "submitit_executor", "submitit_kind",
]


def new_override_parser() -> OverridesParser:
    """Hydra's command-line override grammar."""
    return OverridesParser.create()


def group_has_options(group: str) -> bool:
    """Whether ``group`` names a config group of the initialised config search path."""
    return bool(GlobalHydra.instance().config_loader().get_group_options(group))


def apply_value_overrides(overrides: Sequence[Override], cfg: DictConfig) -> None:
    """Apply value overrides (``optim.lr=0.01``, ``+x=1``, ``~y``) to ``cfg`` in place, exactly as
    Hydra does after composing the defaults list."""
    ConfigLoaderImpl._apply_overrides_to_config(list(overrides), cfg)


def instantiate_launcher(master: DictConfig, task_function: Callable[[DictConfig], Any]) -> Any:
    """The launcher ``master.hydra.launcher`` selects, set up as ``@hydra.main --multirun`` would."""
    HydraConfig.instance().set_config(master)
    loader = GlobalHydra.instance().config_loader()
    context = HydraContext(config_loader=loader, callbacks=Callbacks(master))
    return Plugins.instance().instantiate_launcher(hydra_context=context, task_function=task_function, config=master)


def singleton_state() -> Any:
    """Hydra's process-wide state, shipped to a submitit job so it composes as this process does."""
    return Singleton.get_state()


def is_submitit_launcher(launcher: Any) -> bool:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    return isinstance(launcher, BaseSubmititLauncher)


def submitit_kind(launcher: Any) -> str:
    """'slurm' or 'local': the submitit executor a submitit launcher uses."""
    return str(launcher._EXECUTOR)


def submitit_executor(launcher: Any) -> Any:
    """The submitit executor the hydra-submitit-launcher plugin (1.2.0) builds in its ``launch()``."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    kind = submitit_kind(launcher)
    params = dict(launcher.params)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{kind}_max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster=kind, **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"{kind}_{k}": v for k, v in params.items()})
    return executor
