"""scripts/gpu_smoke.py and scripts/gpu_smoke.sh: the backend check catches a wrong backend, the record
summary fails on an unfinished run (the GPU runs themselves need a GPU: docs/performance.md)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from rmpeft.sparse.dense import DenseBackend

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", REPO / "scripts" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backends_agree_with_the_dense_reference(gpu_smoke, capsys):
    assert gpu_smoke.check_backends(size=256, tokens=64) == 0
    out = capsys.readouterr().out
    assert "against dense" in out and "FAIL" not in out
    assert sum(line.startswith("  ok   torch ") for line in out.splitlines()) == 4   # 2 dtypes x 2 shares


def test_a_backend_that_scales_the_delta_fails(gpu_smoke, capsys, monkeypatch):
    class Doubled(DenseBackend):
        name = "doubled"

        def linear(self, x, weight, bias, values, index, module=None):
            return super().linear(x, weight, bias, values * 2, index, module)

    monkeypatch.setattr(gpu_smoke, "available_backends", lambda device: ["doubled", "dense"])
    monkeypatch.setattr(gpu_smoke, "get_backend", lambda name, device: Doubled())
    assert gpu_smoke.check_backends(size=256, tokens=64) == 1
    assert "FAIL doubled float32" in capsys.readouterr().out


def _record(folder: Path, status: str, val: float | None) -> None:
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps({
        "status": status, "val_metric": val, "test_metric": val, "method_state": {"backend": "triton"},
        "config": {"method": {"name": "masking", "backend": "auto"}, "protocol": {"name": "paper"},
                   "trainer": {"device": "cuda", "precision": "fp16"}}}))


def test_record_summary_fails_on_an_unfinished_run(gpu_smoke, capsys, tmp_path):
    assert gpu_smoke.print_records([str(tmp_path)]) == 1                 # no record at all
    _record(tmp_path / "a", "finished", 0.875)
    assert gpu_smoke.print_records([str(tmp_path)]) == 0
    line = capsys.readouterr().out.splitlines()[-1].split()
    assert line == ["masking", "auto", "triton", "paper", "cuda", "fp16", "finished", "0.875", "0.875"]
    _record(tmp_path / "b", "failed", None)
    assert gpu_smoke.print_records([str(tmp_path)]) == 1


def test_gpu_smoke_script_syntax():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_smoke.sh")], check=True)
