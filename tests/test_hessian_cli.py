"""``rmpeft-hessian RUN_DIR`` on a saved tiny run: rebuilt model, trainable state, record update."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from rmpeft import records
from rmpeft import hessian_cli
from rmpeft.errors import RmpeftError
from tests.helpers import compose_train


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A finished smoke run (Random Masking on tiny-opt) with its delta."""
    from rmpeft.trainer import train

    root = tmp_path_factory.mktemp("hessian-cli")
    cfg = compose_train(["experiment=smoke", f"cache_dir={root / 'cache'}", f"results_root={root / 'runs'}",
                         "trainer.progress=false", "trainer.epochs=2",
                         "method.ratio=0.0003", "analysis.hessian_batches=1"])
    rec = train(cfg)
    assert rec["status"] == "finished", rec["error"]
    return records.run_dir(cfg)


def _exact_top_eigenvalue(run_dir, trained: bool) -> float:
    """Top-|λ| of the full Hessian over the masked values, row by row (dense reference backend)."""
    from omegaconf import OmegaConf

    from rmpeft.sparse import use_backend
    from rmpeft.analysis.sharpness import hessian_loss_fn
    from rmpeft.deltas.apply import build_delta_run
    from rmpeft.methods.delta_format import open_delta
    from rmpeft.run import build_run

    cfg = OmegaConf.create(records.read_record(run_dir)["config"])
    run = build_delta_run(open_delta(run_dir / "delta"), cfg) if trained else build_run(cfg)
    params = run.handle.trainable_parameters()
    loss_fn = hessian_loss_fn(run)
    with use_backend(run.model, "dense"), sdpa_kernel(SDPBackend.MATH):
        loss = loss_fn()
        grads = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])
        rows = [torch.cat([h.reshape(-1) for h in torch.autograd.grad(grads[i], params, retain_graph=True)])
                for i in range(grads.numel())]
    h = torch.stack(rows).double()
    eigs = torch.linalg.eigvalsh(0.5 * (h + h.T))
    return eigs[eigs.abs().argmax()].item()


def test_before_and_after_are_written_into_the_record(saved_run, capsys):
    before = records.read_record(saved_run)
    rc = hessian_cli.main([str(saved_run), "--iters", "200", "--tol", "1e-6"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("before: eigenvalue") and "\nafter: eigenvalue" in out
    rec = records.read_record(saved_run)
    for key in ("status", "test_metric", "val_metric", "epochs", "distance_from_init", "config"):
        assert rec[key] == before[key]
    for phase, trained in (("before", False), ("after", True)):
        h = rec["hessian"][phase]
        assert h["hvp"] == "autograd" and h["sparse_backend"] == "dense" and h["converged"]
        assert h["num_params"] == rec["trainable_params"]
        assert h["hvp_check"] < 1e-3
        assert h["eigenvalue"] == pytest.approx(_exact_top_eigenvalue(saved_run, trained), rel=1e-3)
    assert rec["hessian"]["before"]["eigenvalue"] != rec["hessian"]["after"]["eigenvalue"]
    json.dumps(rec)        # still plain JSON


def test_phase_before_needs_no_trainable_state(saved_run, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    rec = records.read_record(saved_run)
    rec.pop("hessian", None)
    records.write_record(copy, rec)
    assert hessian_cli.main([str(copy), "--phase", "before", "--iters", "5"]) == 0
    assert set(records.read_record(copy)["hessian"]) == {"before"}


def test_missing_trainable_state_is_a_one_line_error(saved_run, tmp_path, capsys):
    copy = tmp_path / "run"
    copy.mkdir()
    records.write_record(copy, records.read_record(saved_run))
    assert hessian_cli.main([str(copy), "--phase", "after"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trainer.save_delta=always" in err


@pytest.mark.parametrize("argv,match", [
    (["--phase", "during"], "valid choices: after, before, both"),
    (["--hvp", "lanczos"], "valid choices: auto, autograd, finite_difference"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, argv, match):
    assert hessian_cli.main([str(tmp_path), *argv]) == 2
    assert match in capsys.readouterr().err


def test_no_record_is_a_one_line_error(tmp_path, capsys):
    assert hessian_cli.main([str(tmp_path)]) == 2
    assert "no run record" in capsys.readouterr().err


def test_load_trainable_checks_count_and_shapes(tmp_path):
    path = tmp_path / "trainable.pt"
    torch.save([torch.ones(3), torch.ones(2, 2)], path)
    a, b = torch.zeros(3), torch.zeros(2, 2)
    hessian_cli.load_trainable(path, [a, b])
    assert a.sum() == 3 and b.sum() == 4
    with pytest.raises(RmpeftError, match="holds 2 tensors but the rebuilt run has 1"):
        hessian_cli.load_trainable(path, [a])
    with pytest.raises(RmpeftError, match=r"tensor 1 has shape \(2, 2\)"):
        hessian_cli.load_trainable(path, [a, torch.zeros(4)])


def test_measure_run_restores_backends_and_mode(saved_run):
    from omegaconf import OmegaConf

    from rmpeft.analysis.sharpness import measure_run
    from rmpeft.sparse import masked_layers
    from rmpeft.run import build_run

    run = build_run(OmegaConf.create(records.read_record(saved_run)["config"]))
    run.model.train()
    backends = {name: m.backend for name, m in masked_layers(run.model).items()}
    assert backends and all(b.name != "dense" for b in backends.values())
    res = measure_run(run, seed=0)
    assert res["sparse_backend"] == "dense" and res["hvp"] == "autograd"
    assert run.model.training
    assert {name: m.backend for name, m in masked_layers(run.model).items()} == backends
    with pytest.raises(RmpeftError, match="valid choices: dense, run"):
        measure_run(run, sparse_backend="sparse")


def _copy_with_measured(saved_run, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    rec = records.read_record(saved_run)
    rec["hessian"] = {"before": {"eigenvalue": 1.5, "norm": 1.5, "converged": True, "source": "rmpeft-hessian"}}
    records.write_record(copy, rec)
    return copy


@pytest.mark.parametrize("argv,expected", [
    (["--iters", "0"], "--iters=0 is invalid; expected an integer in [1, inf]"),
    (["--iters", "-2"], "--iters=-2 is invalid; expected an integer in [1, inf]"),
    (["--batches", "0"], "--batches=0 is invalid; expected an integer in [1, inf]"),
    (["--tol", "0"], "--tol=0.0 is invalid; expected a number in (0, inf]"),
])
def test_bad_numbers_are_refused_before_anything_is_written(saved_run, tmp_path, capsys, argv, expected):
    copy = _copy_with_measured(saved_run, tmp_path)
    before = (copy / "record.json").read_text()
    assert hessian_cli.main([str(copy), "--phase", "before", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rmpeft-hessian: error: {expected}"
    assert (copy / "record.json").read_text() == before


def test_a_measured_eigenvalue_is_never_replaced_by_null(saved_run, tmp_path, capsys, monkeypatch):
    copy = _copy_with_measured(saved_run, tmp_path)
    nan = {"eigenvalue": float("nan"), "norm": float("nan"), "converged": False, "iterations": 1, "hvp": "autograd",
           "num_params": 1, "seconds": 0.0}
    monkeypatch.setattr(hessian_cli, "measure_run", lambda *a, **k: dict(nan))
    assert hessian_cli.main([str(copy), "--phase", "before", "--iters", "1"]) == 1
    assert "the recorded eigenvalue 1.5 is kept" in capsys.readouterr().err
    assert records.read_record(copy)["hessian"]["before"]["eigenvalue"] == 1.5
