from __future__ import annotations

import pytest

from rmpeft.config import CONF_DIR, check_choices, group_choices
from rmpeft.errors import RmpeftError


def test_group_choices_list_the_config_files():
    assert group_choices("model") == ["llama2-7b", "opt-1.3b", "opt-125m", "opt-13b", "tiny-opt"]
    assert {"ft", "masking", "structured_masking", "lora", "adalora", "prefix", "adapter", "bitfit"} == set(
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
