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


@pytest.mark.parametrize("flag", ["--multirun", "-m"])
def test_multirun_checks_every_job_before_launching_any(monkeypatch, capsys, quick, tmp_path, flag):
    out = tmp_path / "out"
    args = [flag, *quick, "method.ratio=0.001,2", f"results_root={out / 'runs'}"]
    assert _train(monkeypatch, args) == USAGE_EXIT
    line = _one_line(capsys)
    assert line.startswith("rmpeft-train: error: method.ratio=2 is invalid; expected a number in (0, 1]"), line
    assert "(1 of 2 jobs, e.g. '" in line and line.endswith("nothing was launched")
    assert not out.exists()   # no run folder and no Hydra sweep folder


def test_a_good_multirun_still_runs_every_job(monkeypatch, capsys, quick, tmp_path):
    assert _train(monkeypatch, ["--multirun", *quick, "optim.lr=1e-2,3e-2", f"results_root={tmp_path / 'r'}"]) == 0
    assert len(list((tmp_path / "r").rglob("record.json"))) == 2


def test_multirun_with_a_bad_value_in_a_single_job(monkeypatch, capsys, quick, tmp_path):
    assert _train(monkeypatch, ["--multirun", *quick, "trainer.epochs=0", f"results_root={tmp_path / 'r'}"]) == USAGE_EXIT
    assert "trainer.epochs=0 is invalid" in _one_line(capsys)
    assert not (tmp_path / "r").exists() and not (tmp_path / "sweeps").exists()


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


@pytest.mark.parametrize("args, expected", [
    (["--batches", "0"], "argument --batches: invalid value '0'; expected an integer >= 1"),
    (["--power-iters", "-3"], "argument --power-iters: invalid value '-3'; expected an integer >= 1"),
])
def test_lr_evaluate_bad_numbers(tmp_path, capsys, args, expected):
    from rmpeft.lr_cli import main

    with pytest.raises(SystemExit) as info:
        main(["--evaluate", str(tmp_path), *args])
    assert info.value.code == USAGE_EXIT and expected in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--out", "--cache"])
def test_lr_evaluate_unwritable_output_refused_before_any_work(tmp_path, capsys, option):
    from rmpeft.lr_cli import main
    from tests.test_tables import record, write_all

    root = write_all(tmp_path / "runs", [record("rte", "ft", 1e-3, 0, 0.5, 0.5)])
    afile = tmp_path / "afile"
    afile.write_text("x")
    other = "--cache" if option == "--out" else "--out"
    assert main(["--evaluate", str(root), option, str(afile / "x.json"), other, str(tmp_path / "o" / "y.json")]) \
        == USAGE_EXIT
    assert f"{option} {afile / 'x.json'} lies below the file '{afile}'" in _one_line(capsys)
    assert not (tmp_path / "o").exists()


def test_plot_that_fails_leaves_no_out_folder(tmp_path, capsys):
    from rmpeft.reporting import cli
    from tests.test_tables import record, write_all

    root = write_all(tmp_path / "runs", [record("rte", "ft", 1e-3, 0, 0.5, 0.5)])
    notes = tmp_path / "notes.json"
    notes.write_text("{}")
    out = tmp_path / "figs"
    assert cli.plot_main(["lr-prediction", str(root), "--lr-auto", str(notes), "--out", str(out)]) == USAGE_EXIT
    assert "not an LR-prediction evaluation" in _one_line(capsys)
    assert not out.exists()


def test_a_filter_that_matches_nothing_names_itself_and_what_is_there(tmp_path, capsys):
    from rmpeft.reporting import cli
    from tests.test_tables import record, write_all

    root = write_all(tmp_path / "runs", [record("rte", "ft", 1e-3, 0, 0.5, 0.5)])
    assert cli.tables_main([str(root), "--task", "rte", "--model", "nonesuch"]) == USAGE_EXIT
    line = _one_line(capsys)
    assert "--model nonesuch matches no record" in line and "models there:" in line, line


def test_unknown_fields_say_so_in_identity_and_multirun(monkeypatch, capsys, quick, tmp_path):
    from rmpeft.identity_cli import main

    assert main([*quick, "trainer.epoch=3"]) == USAGE_EXIT
    assert "unknown field 'trainer.epoch' in 'trainer.epoch=3' (did you mean trainer.epochs?)" in _one_line(capsys)
    assert _train(monkeypatch, ["--multirun", *quick, "trainer.epoch=1,2", f"results_root={tmp_path / 'r'}"]) == USAGE_EXIT
    assert "unknown field 'trainer.epoch' in 'trainer.epoch=1' (did you mean trainer.epochs?)" in _one_line(capsys)
