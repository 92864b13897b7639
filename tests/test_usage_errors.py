"""Bad input ends in one line on stderr naming the field or argument, the bad value and what is valid, with
exit status 2, in every command; nothing runs."""

from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path

import pytest

from rmpeft.errors import USAGE_EXIT


def _one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


def _train(monkeypatch, args: list[str]) -> int:
    """``rmpeft-train ARGS`` in this process; its exit status. Hydra's logging setup is undone afterwards
    (its handlers write to this test's captured streams)."""
    from rmpeft import train

    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    saved = {id(lg): (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers}
    monkeypatch.setattr(sys, "argv", ["rmpeft-train", *args])
    try:
        train.main()
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        for lg in [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                           if isinstance(lg, logging.Logger)]:
            handlers, level, propagate, disabled = saved.get(id(lg), ([], logging.NOTSET, True, False))
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled
    return 0


@pytest.fixture
def quick(smoke_overrides) -> list[str]:
    """A smoke run cut to one step, in case a bad value slips through."""
    return [*smoke_overrides, "trainer.epochs=1", "trainer.max_steps=1"]


@pytest.mark.parametrize("args,expected", [
    (["trainer.epochs=0"], "trainer.epochs=0 is invalid; expected an integer in [1, inf]"),
    (["optim.lr=1e300"], "optim.lr=1e+300 is invalid; expected a number in (0, 1e+06]"),
    (["method=bitfit", "method.target_modules=123"],
     "method.target_modules=123 is invalid; expected a module name or a list of module names or null"),
    (["name=${python:1+1}"], "name='${python:1+1}' cannot be resolved: unknown resolver 'python'"),
    (["+trainer.epoch=3"], "unknown field 'trainer.epoch' in '+trainer.epoch=3' (did you mean trainer.epochs?)"),
    (["trainer.epoch=3"], "unknown field 'trainer.epoch' in 'trainer.epoch=3' (did you mean trainer.epochs?)"),
])
def test_train_bad_values_are_one_line_with_status_2(monkeypatch, capsys, quick, args, expected):
    assert _train(monkeypatch, [*quick, *args]) == USAGE_EXIT
    line = _one_line(capsys)
    assert line.startswith("rmpeft-train: error: ") and expected in line, line


def test_fields_under_open_nodes_may_be_added():
    from rmpeft.config import check_choices

    check_choices(["+model.arch.dropout=0.0", "+hydra.launcher.comment=x", "+resources.models.my-model={gpus: 1}"])


def test_results_root_that_is_a_file(monkeypatch, capsys, quick, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _train(monkeypatch, [*quick, f"results_root={afile}"]) == USAGE_EXIT
    line = _one_line(capsys)
    assert f"results_root='{afile}' is a file" in line and "expected a folder" in line


def test_read_only_results_folder(monkeypatch, capsys, quick, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(ro, os.W_OK):   # root writes anywhere: make the check see what another user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real(p, mode, **kw))
    try:
        assert _train(monkeypatch, [*quick, f"results_root={ro / 'runs'}"]) == USAGE_EXIT
    finally:
        ro.chmod(stat.S_IRWXU)
    line = _one_line(capsys)
    assert f"results_root='{ro / 'runs'}'" in line and f"'{ro}' is not writable" in line


def test_preview_bad_value_exits_2(monkeypatch, capsys):
    from rmpeft import preview

    monkeypatch.setattr(sys, "argv", ["rmpeft-preview", "task=synthetic", "n=-1"])
    with pytest.raises(SystemExit) as e:
        preview.main()
    assert e.value.code == USAGE_EXIT
    assert "n must be an integer >= 0" in _one_line(capsys)


def test_params_checks_the_method_fields(capsys):
    from rmpeft.params import main

    assert main(["method=lora", "method.r=-1"]) == USAGE_EXIT
    assert _one_line(capsys) == "rmpeft-params: error: method.r=-1 is invalid; expected an integer in [1, inf]"
    assert main(["+method.rank=4"]) == USAGE_EXIT
    assert "unknown field 'method.rank'" in _one_line(capsys)


def test_theory_masks_that_keep_nothing(tmp_path, capsys):
    from rmpeft.theory import main

    assert main(["--n", "5", "--d", "10", "--no-plot", "--out", str(tmp_path)]) == USAGE_EXIT
    line = _one_line(capsys)
    assert "--p 0.05" in line and "d=10" in line and "d·p >= 1" in line


@pytest.mark.parametrize("command", ["tables", "plot"])
def test_out_onto_an_existing_file(tmp_path, capsys, command):
    from rmpeft.reporting import cli
    from tests.test_tables import record, write_all

    root = write_all(tmp_path / "runs", [record("rte", "ft", 1e-3, 0, 0.5, 0.5)])
    afile = tmp_path / "afile"
    afile.write_text("x")
    if command == "tables":
        rc = cli.tables_main([str(root), "--out", str(afile)])
    else:
        rc = cli.plot_main(["lr-curves", str(root), "--out", str(afile)])
    assert rc == USAGE_EXIT
    assert f"--out {afile} is a file; expected a folder" in _one_line(capsys)
    assert afile.read_text() == "x"


def test_theory_out_onto_an_existing_file(tmp_path, capsys):
    from rmpeft.theory import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["--n", "4", "--d", "40", "--p", "0.5", "--draws", "1", "--noise-draws", "1", "--no-plot",
                 "--out", str(afile)]) == USAGE_EXIT
    assert f"--out {afile} is a file" in _one_line(capsys)
