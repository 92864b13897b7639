"""The private Hydra and hydra-submitit-launcher APIs behind rmpeft-sweep still exist as used.

These fail loudly when an upgrade moves or changes them: adjust rmpeft/sweeps/hydra_internals.py
(the only module that touches them) and its SUPPORTED versions together.
"""

from __future__ import annotations

import ast
import inspect
from importlib.metadata import version
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rmpeft.config import compose_run, hydra_initialized
from rmpeft.sweeps import hydra_internals as hi

PACKAGE = Path(hi.__file__).parent
# Modules outside Hydra's application API (hydra, hydra.errors, hydra.types, HydraConfig.get).
PRIVATE_MODULES = ("hydra._internal", "hydra.core.singleton", "hydra.core.plugins", "hydra.core.global_hydra",
                   "hydra.core.override_parser", "hydra.core.utils", "hydra_plugins")


@pytest.mark.parametrize("dist, prefix", hi.SUPPORTED)
def test_installed_versions_are_the_supported_ones(dist, prefix):
    assert version(dist).startswith(prefix), f"{dist} {version(dist)} is not the supported {prefix}*: recheck hydra_internals"


def test_private_symbols_have_the_signatures_used():
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton
    from hydra.types import HydraContext
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher, SlurmLauncher

    def params(fn):
        return list(inspect.signature(fn).parameters)

    assert params(ConfigLoaderImpl._apply_overrides_to_config) == ["overrides", "cfg"]
    assert params(Plugins.instantiate_launcher)[1:] == ["hydra_context", "task_function", "config"]
    assert params(Callbacks.__init__)[1:] == ["config"]
    assert callable(Singleton.get_state) and callable(Singleton.set_state)
    assert {"config_loader", "callbacks"} <= set(HydraContext.__dataclass_fields__)
    assert SlurmLauncher._EXECUTOR == "slurm" and issubclass(SlurmLauncher, BaseSubmititLauncher)
    assert "submitit_folder" in OmegaConf.structured(BaseQueueConf)
    # the submitit job entry point is the launcher itself, called with these arguments
    assert params(BaseSubmititLauncher.__call__)[1:] == [
        "sweep_overrides", "job_dir_key", "job_num", "job_id", "singleton_state"]


def test_wrappers_work_on_the_project_config(tmp_path):
    with hydra_initialized():
        assert hi.group_has_options("model") and not hi.group_has_options("optim.lr")
        cfg = compose_run(["experiment=smoke"])
        hi.apply_value_overrides([hi.new_override_parser().parse_override("optim.lr=0.5")], cfg)
        assert cfg.optim.lr == 0.5
        master = compose_run(["hydra.mode=MULTIRUN", "cluster=submitit_local", f"hydra.sweep.dir={tmp_path}"],
                             with_hydra=True)
        launcher = hi.instantiate_launcher(master, lambda c: None)
        assert hi.is_submitit_launcher(launcher) and hi.submitit_kind(launcher) == "local"
        executor = hi.submitit_executor(launcher)
        assert executor.cluster == "local" and hi.singleton_state() is not None
        basic = hi.instantiate_launcher(compose_run(["hydra.mode=MULTIRUN"], with_hydra=True), lambda c: None)
        assert not hi.is_submitit_launcher(basic)


def test_no_other_module_uses_private_hydra_apis():
    offenders = []
    for path in PACKAGE.parent.rglob("*.py"):
        if path == Path(hi.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            modules += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {m}" for m in modules if m.startswith(PRIVATE_MODULES)]
    assert not offenders, offenders
