"""The wandb logger (offline / disabled modes, failures never raise) and the wandb reader (fake API)."""

from __future__ import annotations

import json
import struct
import sys
import warnings
from pathlib import Path

import pytest

from rmpeft import loggers
from rmpeft.errors import RmpeftError
from rmpeft.loggers import (
    RunLogger,
    WandbLogger,
    build_logger,
)
from rmpeft.records import setting_hash
from rmpeft.reporting.sources import record_from_wandb_run, records_from_wandb

CONF = Path(__file__).resolve().parent.parent / "conf"


@pytest.fixture(autouse=True)
def isolated_wandb(tmp_path, monkeypatch):
    """No network, no user settings: everything wandb writes goes under tmp_path."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_ENTITY", "WANDB_PROJECT", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-default"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_NETRC", str(tmp_path / "netrc"))
    yield


@pytest.fixture(scope="module", autouse=True)
def stop_wandb_service():
    yield
    if "wandb" in sys.modules and sys.modules["wandb"] is not None:
        sys.modules["wandb"].teardown()


def cfg(tmp_path=None, mode="offline", **logger):
    return {
        "name": "sweep-a", "seed": 1,
        "model": {"name": "tiny-opt"}, "task": {"name": "synthetic"},
        "method": {"name": "masking", "ratio": 0.01}, "optim": {"lr": 0.03},
        "logger": {"name": "wandb", "project": "rmpeft-test", "entity": None, "mode": mode, "group": None,
                   "run_name": None, "tags": ["extra"], "dir": str(tmp_path) if tmp_path else None,
                   "init_timeout": 30, **logger},
    }


RECORD = {
    "status": "finished", "error": None, "config": {"x": 1},
    "epochs": [{"epoch": 1, "train_loss": 0.9, "val_metric": 0.5}, {"epoch": 2, "train_loss": 0.4, "val_metric": 0.75}],
    "best_epoch": 2, "val_metric": 0.75, "test_metric": 0.7, "metric": "accuracy", "trainable_params": 12,
    "total_params": 1200, "trainable_share": 0.01, "wall_s": 1.5, "method_state": {"backend": "torch"},
}


def read_wandb_file(path: Path) -> list:
    """Records of a `.wandb` transaction log (LevelDB-style log: 7-byte header, 32 KiB blocks of
    checksum/length/type-framed chunks, each record a serialised protobuf `Record`)."""
    import wandb
    from wandb.proto import wandb_internal_pb2 as pb

    wandb.teardown()   # the wandb service writes the log asynchronously; stopping it flushes the file

    data, block, pos, buf, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if length == 0 and kind == 0:
            pos += (block - pos % block) % block
            continue
        buf += data[pos:pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST
            r = pb.Record()
            r.ParseFromString(buf)
            out.append(r)
            buf = b""
    return out


def _value(item) -> object:
    return json.loads(item.value_json)


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_build_logger_choices(tmp_path, monkeypatch):
    assert type(build_logger({"logger": {"name": "none"}})) is RunLogger
    assert type(build_logger({})) is RunLogger
    assert isinstance(build_logger(cfg(tmp_path)), WandbLogger)
    with pytest.raises(RmpeftError, match="unknown logger 'tensorboard'; valid choices: none, wandb"):
        build_logger({"logger": {"name": "tensorboard"}})
    with pytest.raises(RmpeftError, match="unknown logger.mode 'dryrun'; valid choices: disabled, offline, online"):
        build_logger(cfg(tmp_path, mode="dryrun"))
    monkeypatch.setenv("RANK", "1")          # non-zero ranks of a multi-process run do not log
    assert type(build_logger(cfg(tmp_path))) is RunLogger


def test_names_group_and_tags_are_derived(tmp_path):
    s = loggers.wandb_settings(cfg(tmp_path))
    group = f"tiny-opt-synthetic-masking-r0.01-{setting_hash(cfg(tmp_path))}"
    assert s.group == group and s.run_name == f"{group}-lr0.03-s1"
    # the group is one table cell: another LR/seed/logger shares it, another method setting does not
    other = cfg(None, mode="disabled")
    other["optim"]["lr"], other["seed"] = 0.1, 2
    assert loggers.wandb_settings(other).group == group
    other["method"]["r"] = 16
    assert loggers.wandb_settings(other).group != group
    assert s.tags == ["sweep-a", "tiny-opt", "synthetic", "masking", "extra"]
    s = loggers.wandb_settings(cfg(tmp_path, group="g", run_name="r"))
    assert (s.group, s.run_name) == ("g", "r")


def test_config_group_composes(monkeypatch):
    from hydra import compose, initialize_config_dir

    monkeypatch.setenv("WANDB_MODE", "offline")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        c = compose("train", overrides=["logger=wandb", "method=ft", "logger.project=p", "logger.tags=[a,b]"])
        assert c.logger.mode == "offline"       # follows WANDB_MODE unless overridden
        s = loggers.wandb_settings(c)
        assert (s.project, s.mode, s.tags[-2:]) == ("p", "offline", ["a", "b"])
        assert compose("train", overrides=["method=ft"]).logger.name == "none"


def test_offline_run_holds_config_curves_and_summary(tmp_path):
    logger = build_logger(cfg(tmp_path))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="wandb logging disabled")
        logger.log_config(cfg(tmp_path))
        logger.log_epoch(1, 0.9, 0.5)
        logger.log_epoch(2, 0.4, 0.75)
        logger.log_summary(RECORD)
        logger.finish()
    assert not logger.disabled
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    recs = read_wandb_file(run_file)

    run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    group = f"tiny-opt-synthetic-masking-r0.01-{setting_hash(cfg(tmp_path))}"
    assert run.project == "rmpeft-test" and run.display_name == f"{group}-lr0.03-s1"
    assert run.run_group == group
    assert list(run.tags) == ["sweep-a", "tiny-opt", "synthetic", "masking", "extra"]
    config = {_key(u): _value(u) for u in run.config.update}
    assert config["model"] == {"name": "tiny-opt"} and config["optim"] == {"lr": 0.03}

    history = [{_key(i): _value(i) for i in r.history.item} for r in recs if r.WhichOneof("record_type") == "history"]
    assert [(h["epoch"], h["train/loss"], h["val/metric"]) for h in history] == [(1, 0.9, 0.5), (2, 0.4, 0.75)]

    summary = {}
    for r in recs:
        if r.WhichOneof("record_type") == "summary":
            summary.update({_key(u): _value(u) for u in r.summary.update})
    assert summary["status"] == "finished" and summary["test_metric"] == 0.7 and summary["val_metric"] == 0.75
    assert summary["method_state"] == {"backend": "torch"} and summary["error"] is None
    assert "epochs" not in summary and "config" not in summary

    exit_code = next(r.exit.exit_code for r in recs if r.WhichOneof("record_type") == "exit")
    assert exit_code == 0


def test_failed_run_is_marked_failed(tmp_path):
    logger = build_logger(cfg(tmp_path))
    logger.log_config({"a": 1})
    logger.finish()                              # no summary: the training raised
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert next(r.exit.exit_code for r in read_wandb_file(run_file) if r.WhichOneof("record_type") == "exit") == 1


def test_disabled_mode_writes_nothing_and_never_warns(tmp_path):
    logger = build_logger(cfg(tmp_path, mode="disabled"))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="wandb logging disabled")
        logger.log_config({"a": 1})
        logger.log_epoch(1, 0.5, None)
        logger.log_summary(RECORD)
        logger.finish()
    assert not logger.disabled
    assert not list(tmp_path.rglob("*.wandb"))


def test_init_failure_warns_once_and_logging_stops(tmp_path, monkeypatch):
    import wandb

    def broken_init(**kwargs):
        raise wandb.errors.CommError("network is unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    logger = build_logger(cfg(tmp_path))
    with pytest.warns(RuntimeWarning, match=r"wandb logging disabled \(CommError: network is unreachable\); "
                                            "the run record on disk is unaffected"):
        logger.log_config({"a": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logger.log_epoch(1, 0.5, 0.5)
        logger.log_summary(RECORD)
        logger.finish()
    assert logger.disabled


def test_missing_wandb_package_warns(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    logger = build_logger(cfg(tmp_path))
    with pytest.warns(RuntimeWarning, match="wandb logging disabled.*ModuleNotFoundError"):
        logger.log_config({"a": 1})
    logger.finish()


def test_error_while_logging_an_epoch_warns(tmp_path):
    class BrokenRun:
        exit_codes: list = []

        def log(self, row):
            raise OSError("disk full")

        def finish(self, exit_code):
            self.exit_codes.append(exit_code)

    logger = build_logger(cfg(tmp_path))
    logger.run = BrokenRun()
    with pytest.warns(RuntimeWarning, match="OSError: disk full"):
        logger.log_epoch(1, 0.5, 0.5)
    logger.log_summary(RECORD)                     # disabled: a no-op
    logger.finish()                                # but the run is still closed, not left dangling
    assert BrokenRun.exit_codes == [1] and logger.run is None


@pytest.mark.slow
def test_unreachable_server_with_a_key_warns_and_returns(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")   # nothing listens on the discard port
    logger = build_logger(cfg(tmp_path, mode="online", init_timeout=2))
    with pytest.warns(RuntimeWarning, match="wandb logging disabled"):
        logger.log_config({"a": 1})
    logger.log_epoch(1, 0.5, 0.5)
    logger.finish()


# -- reading back ----------------------------------------------------------------------------------


class FakeRun:
    id = "abc123"
    state = "finished"
    created_at = "2024-05-01T10:00:00"
    config = {"_wandb": {"x": 1}, "model": {"name": "opt-125m"}, "task.name": "rte",
              "method": {"value": {"name": "masking", "ratio": 0.001}, "desc": None}, "optim": {"lr": 0.01}}
    summary_metrics = {**loggers.summary_from_record(RECORD), "_step": 2, "epoch": 2, "val/metric": 0.75,
                       "train/loss": 0.4}

    def scan_history(self, keys):
        assert keys == ["epoch", "train/loss", "val/metric"]
        return iter([{"epoch": 2, "train/loss": 0.4, "val/metric": 0.75},
                     {"epoch": 1, "train/loss": 0.9, "val/metric": 0.5}, {"epoch": None}])


class FakeApi:
    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None, lazy=True):
        self.calls.append((path, filters, lazy))
        return self._runs


def test_record_from_wandb_run():
    rec = record_from_wandb_run(FakeRun(), history=True)
    assert rec["config"] == {"model": {"name": "opt-125m"}, "task": {"name": "rte"},
                             "method": {"name": "masking", "ratio": 0.001}, "optim": {"lr": 0.01}}
    assert rec["status"] == "finished" and rec["test_metric"] == 0.7 and rec["val_metric"] == 0.75
    assert rec["epochs"] == RECORD["epochs"]
    assert "val/metric" not in rec and "_step" not in rec
    assert record_from_wandb_run(FakeRun())["epochs"] == []


@pytest.mark.parametrize("state, status", [("crashed", "failed"), ("running", "running"), ("finished", "failed")])
def test_runs_without_rmpeft_summary(state, status):
    run = FakeRun()
    run.state, run.summary_metrics = state, {"_runtime": 2}
    rec = record_from_wandb_run(run)
    assert rec["status"] == status and f"wandb run state '{state}'" in rec["error"]


def test_records_from_wandb_uses_the_api_object():
    api = FakeApi([FakeRun()])
    pairs = records_from_wandb("team/proj", api=api, filters={"tags": "sweep-a"})
    assert api.calls == [("team/proj", {"tags": "sweep-a"}, False)]
    assert pairs[0][0] == "wandb:team/proj/abc123" and pairs[0][1].status == "finished"

    class Broken:
        def runs(self, path):
            raise ValueError("Could not find project proj\nmore")

    msg = "^cannot read wandb project team/proj: ValueError: Could not find project proj$"
    with pytest.raises(RmpeftError, match=msg):
        records_from_wandb("team/proj", api=Broken())
