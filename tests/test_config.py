from __future__ import annotations

import pytest

from rmpeft.config import CONF_DIR, check_choices, compose_config, group_choices
from rmpeft.errors import RmpeftError


def test_group_choices_list_the_config_files():
    models = group_choices("model")
    assert models == sorted(models) and set(models) >= {"llama2-7b", "opt-1.3b", "opt-125m", "opt-13b", "tiny-opt"}
    assert {"ft", "masking", "structured_masking", "lora", "adalora", "prefix", "adapter", "bitfit", "shira", "none"} == set(
        group_choices("method"))
    assert set(group_choices("task")) >= {"sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "record",
                                          "squad", "drop"}
    assert (CONF_DIR / "train.yaml").exists()


def test_check_choices_names_the_bad_value_of_a_multirun_list():
    check_choices(["method=lora,masking", "method.ratio=0.1", "seed=1", "--multirun", "experiment=null"])
    with pytest.raises(RmpeftError, match=r"^unknown method 'dora'; valid choices: adalora, adapter, bitfit, ft, "):
        check_choices(["method=lora,dora"])
    with pytest.raises(RmpeftError, match="unknown cluster 'k8s'"):
        check_choices(["+cluster=k8s"])
    check_choices(["model=nope"], groups=("task",))  # only the named groups are checked
    with pytest.raises(RmpeftError, match=r"^unknown model ''; valid choices: .*smollm2-135m"):
        check_choices(["model="])


def test_resources_are_their_own_group_and_no_part_of_a_run_identity():
    from rmpeft import records

    cfg = compose_config(["model=opt-13b", "method=ft", "cluster=slurm"], with_hydra=True)
    assert cfg.resources.models["opt-13b"].mem_gb == 96 and cfg.hydra.launcher.mem_gb == 400
    assert "resources" not in (CONF_DIR / "cluster" / "slurm.yaml").read_text().split("hydra:")[0].split("cluster:")[0]
    changed = compose_config(["model=opt-13b", "method=ft", "resources.models.opt-13b.mem_gb=1"])
    assert records.identity_hash(changed) == records.identity_hash(compose_config(["model=opt-13b", "method=ft"]))


def test_a_site_file_in_conf_local_is_optional_and_ignored_by_git():
    import subprocess

    assert "optional local: default" in (CONF_DIR / "train.yaml").read_text()
    ignored = subprocess.run(["git", "check-ignore", "-q", str(CONF_DIR / "local" / "default.yaml")], cwd=CONF_DIR)
    kept = subprocess.run(["git", "check-ignore", "-q", str(CONF_DIR / "local" / "README.md")], cwd=CONF_DIR)
    assert (ignored.returncode, kept.returncode) == (0, 1)
