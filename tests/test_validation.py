from __future__ import annotations

import pytest

from rmpeft.errors import RmpeftError
from rmpeft.validation import COMMON_FIELDS, Choice, Float, Int, check_value, validate


def _cfg(**over):
    cfg = {
        "seed": 0, "data_seed": 0, "name": "x", "force": False,
        "model": {"name": "m", "name_or_path": "org/model", "random_init": False},
        "task": {"name": "rte", "kind": "classification", "metric": "accuracy", "num_train": 10, "num_val": 5,
                 "num_test": 5, "full_train": False},
        "optim": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
                  "scheduler": "constant", "warmup_steps": 0, "max_grad_norm": None},
        "trainer": {"epochs": 1, "batch_size": 8, "grad_accum": 1, "eval_batch_size": 8, "max_length": 64,
                    "max_new_tokens": 5, "precision": "auto", "device": "auto", "save_trainable": False,
                    "progress": False, "max_steps": None, "divergence_loss": 1e4},
        "analysis": {"hessian": False, "hessian_iters": 2, "hessian_tol": 1e-3, "hessian_batches": 1},
        "method": {"name": "masking", "ratio": 0.001},
    }
    for dotted, value in over.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def test_a_good_config_passes():
    validate(_cfg())


@pytest.mark.parametrize("field,value,message", [
    ("seed", "abc", r"^seed='abc' is invalid; expected an integer in \[0, inf\]$"),
    ("optim__lr", "abc", r"^optim.lr='abc' is invalid; expected a number in \(0, 1e\+06\] or auto$"),
    ("optim__lr", 1e300, r"^optim.lr=1e\+300 is invalid; expected a number in \(0, 1e\+06\] or auto$"),
    ("optim__lr", 0.0, r"^optim.lr=0.0 is invalid"),
    ("optim__lr", float("nan"), r"^optim.lr=nan is invalid"),
    ("trainer__epochs", 0, r"^trainer.epochs=0 is invalid; expected an integer in \[1, inf\]$"),
    ("trainer__batch_size", 0, r"^trainer.batch_size=0 is invalid"),
    ("trainer__max_steps", 0, r"^trainer.max_steps=0 is invalid; expected an integer in \[1, inf\] or null$"),
    ("trainer__device", "tpu", r"^trainer.device='tpu' is invalid; expected one of auto, cpu, cuda$"),
    ("trainer__precision", "fp8", r"^trainer.precision='fp8' is invalid; expected one of auto, fp32, bf16, fp16$"),
    ("optim__scheduler", "step", r"^optim.scheduler='step' is invalid; expected one of constant, linear, cosine$"),
    ("trainer__progress", "yes", r"^trainer.progress='yes' is invalid; expected true or false$"),
    ("optim__betas", [0.9], r"^optim.betas=\[0.9\] is invalid; expected a list of two numbers in \[0, 1\]$"),
    ("trainer__epochs", 2.5, r"^trainer.epochs=2.5 is invalid"),
    ("trainer__epochs", True, r"^trainer.epochs=True is invalid"),
])
def test_bad_values_name_the_field_the_value_and_what_is_valid(field, value, message):
    with pytest.raises(RmpeftError, match=message):
        validate(_cfg(**{field: value}))


def test_batch_must_split_over_accumulation_and_processes(monkeypatch):
    with pytest.raises(RmpeftError, match=r"^trainer.batch_size=6 is not divisible by trainer.grad_accum=4 x 1"):
        validate(_cfg(trainer__batch_size=6, trainer__grad_accum=4))
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(RmpeftError, match="x 3 processes"):
        validate(_cfg())


def test_missing_local_model_path_is_neither_folder_nor_hub_id(tmp_path):
    with pytest.raises(RmpeftError, match=r"model.name_or_path='/nonexistent' is neither an existing folder nor a hub id"):
        validate(_cfg(model__name_or_path="/nonexistent"))
    validate(_cfg(model__name_or_path=str(tmp_path)))          # an existing folder
    validate(_cfg(model__name_or_path="facebook/opt-125m"))    # a hub id is not checked offline


def test_data_dir_must_be_an_existing_folder(tmp_path):
    with pytest.raises(RmpeftError, match=r"^task.data_dir='/nonexistent/RTE' is not an existing folder; expected"):
        validate(_cfg(task__data_dir="/nonexistent/RTE"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(RmpeftError, match=r"^task.data_dir='.*file.txt' is not an existing folder"):
        validate(_cfg(task__data_dir=str(tmp_path / "file.txt")))
    validate(_cfg(task__data_dir=str(tmp_path)))
    validate(_cfg(task__data_dir=None))                         # the hub


@pytest.mark.parametrize("over,message", [
    ({"task__layout": "folders"}, r"^task.layout='folders' is invalid; expected one of auto, hub, imagefolder, "),
    ({"logger": {"name": "tensorboard"}}, r"^logger.name='tensorboard' is invalid; expected one of none, wandb$"),
    ({"logger": {"name": "wandb", "mode": "ofline", "project": "p"}},
     r"^logger.mode='ofline' is invalid; expected one of online, offline, disabled$"),
    ({"logger": {"name": "wandb", "mode": "offline", "project": ""}}, r"^logger.project='' is invalid"),
    ({"logger": {"name": "wandb", "mode": "offline", "init_timeout": 0}}, r"^logger.init_timeout=0 is invalid"),
])
def test_task_layout_and_logger_fields(over, message):
    with pytest.raises(RmpeftError, match=message):
        validate(_cfg(**over))
    validate(_cfg(logger={"name": "none", "mode": "ignored by the none logger"}))
    validate(_cfg(logger={"name": "wandb", "mode": "disabled", "project": "p", "init_timeout": 5}))


def test_method_fields_are_checked_with_their_prefix():
    fields = {"ratio": Float(0, 1, low_open=True), "backend": Choice("auto", "torch"), "r": Int(1)}
    with pytest.raises(RmpeftError, match=r"^method.ratio='abc' is invalid"):
        validate(_cfg(method__ratio="abc"), fields | {"backend": Choice("auto", "torch", nullable=True)})
    with pytest.raises(RmpeftError, match=r"^method.backend is missing; expected one of auto, torch$"):
        validate(_cfg(), fields)
    with pytest.raises(RmpeftError, match=r"^method.r is missing; expected an integer in \[1, inf\]$"):
        validate(_cfg(method__backend="auto"), fields)


def test_every_common_spec_describes_itself():
    for field, spec in COMMON_FIELDS.items():
        assert spec.describe(), field
        if spec.kind == "int":
            with pytest.raises(RmpeftError, match=field.replace(".", r"\.")):
                check_value(field, "not a number", spec)
