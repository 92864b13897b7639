"""The sparse update engine: every backend against the dense reference, memory, optimizer state, sampling."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from rmpeft.errors import RmpeftError
from rmpeft.sparse import available_backends, get_backend, strategy_tuning
from rmpeft.sparse.dense import DenseBackend
from rmpeft.sparse.layers import MaskedLinear, layer_state_bytes
from rmpeft.sparse.mask_sampling import (
    column_order,
    sample_positions,
    split_count,
    take_columns,
)
from rmpeft.sparse.torch_backend import (
    FORWARD_STRATEGIES,
    SDDMM_STRATEGIES,
    TorchBackend,
)

# Every CPU implementation: each pinned torch strategy pair, torch with autotuning, torch with the fixed
# rule, and whatever other backend is installed here (spops built from source, triton interpreter).
CPU_BACKENDS = {f"torch-{f}-{s}": TorchBackend(f, s)
                for f, s in itertools.product(FORWARD_STRATEGIES, SDDMM_STRATEGIES)}
CPU_BACKENDS["torch-autotune"] = TorchBackend()
CPU_BACKENDS["torch-rule"] = TorchBackend(autotune=False)
for _name in available_backends("cpu"):
    if _name not in ("torch", "dense"):
        CPU_BACKENDS[_name] = get_backend(_name, "cpu")

# (out_features, in_features, nnz): non-square, tiny, empty, full and one-entry masks.
SHAPES = [(7, 5, 9), (5, 7, 0), (1, 1, 1), (3, 8, 24), (16, 12, 1), (33, 17, 200)]


def _problem(out_f: int, in_f: int, nnz: int, seed: int, bias: bool = True, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    index = sample_positions(out_f * in_f, nnz, gen)
    weight = torch.randn(out_f, in_f, generator=gen, dtype=dtype)
    b = torch.randn(out_f, generator=gen, dtype=dtype) if bias else None
    values = torch.randn(nnz, generator=gen, dtype=dtype)
    x = torch.randn(2, 3, in_f, generator=gen, dtype=dtype)
    gy = torch.randn(2, 3, out_f, generator=gen, dtype=dtype)
    return index, weight, b, values, x, gy


def _run(backend, index, weight, bias, values, x, gy):
    v = values.clone().requires_grad_(True)
    xx = x.clone().requires_grad_(True)
    y = backend.linear(xx, weight, bias, v, index)
    gx, gv = torch.autograd.grad(y, (xx, v), gy, allow_unused=True)
    return y.detach(), gx, (torch.zeros_like(v) if gv is None else gv)


@pytest.mark.parametrize("name", sorted(CPU_BACKENDS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_backend_matches_dense_reference(name, shape):
    out_f, in_f, nnz = shape
    for seed, bias in [(0, True), (1, False)]:
        problem = _problem(out_f, in_f, nnz, seed, bias)
        ref = _run(DenseBackend(), *problem)
        got = _run(CPU_BACKENDS[name], *problem)
        for r, g, what in zip(ref, got, ("output", "input grad", "values grad")):
            assert g.shape == r.shape, what
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=f"{name} {shape}: {what}")


def test_dense_reference_is_the_masked_dense_gradient():
    """The reference itself: values' gradient = dense weight gradient at the mask, output = x (W+S)^T + b."""
    index, weight, bias, values, x, gy = _problem(6, 4, 10, seed=3)
    w_full = weight.clone()
    w_full.view(-1)[index.long()] += values
    w_full.requires_grad_(True)
    y_ref = torch.nn.functional.linear(x, w_full, bias)
    (g_full,) = torch.autograd.grad(y_ref, w_full, gy)
    y, _, gv = _run(DenseBackend(), index, weight, bias, values, x, gy)
    torch.testing.assert_close(y, y_ref.detach())
    torch.testing.assert_close(gv, g_full.view(-1)[index.long()])


def test_float32_and_bfloat16_weights():
    """fp32 values on bf16 weights (the trainer's mixed setting) agree with the reference in bf16."""
    index, weight, bias, values, x, gy = _problem(24, 16, 40, seed=4, dtype=torch.float32)
    ref = _run(DenseBackend(), index, weight.bfloat16(), bias.bfloat16(), values, x.bfloat16(), gy.bfloat16())
    for name in ("torch-merged-sampled_addmm", "torch-split-gather", "torch-merged-tiles"):
        got = _run(CPU_BACKENDS[name], index, weight.bfloat16(), bias.bfloat16(), values, x.bfloat16(), gy.bfloat16())
        assert got[0].dtype == torch.bfloat16 and got[2].dtype == torch.float32
        for r, g in zip(ref, got):
            torch.testing.assert_close(g.float(), r.float(), rtol=3e-2, atol=3e-2)


def test_autocast_runs_in_autocast_dtype():
    index, weight, bias, values, x, gy = _problem(8, 8, 10, seed=5, dtype=torch.float32)
    layer = MaskedLinear(nn.Linear(8, 8), index, TorchBackend())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.values.grad.dtype == torch.float32 and layer.values.grad.shape == (10,)


def test_frozen_weight_never_gets_a_gradient():
    for name, backend in CPU_BACKENDS.items():
        base = nn.Linear(12, 9)
        base.requires_grad_(False)
        layer = MaskedLinear(base, sample_positions(108, 20, torch.Generator().manual_seed(0)), backend)
        layer(torch.randn(4, 12, requires_grad=True)).square().sum().backward()
        assert base.weight.grad is None and base.bias.grad is None, name
        assert layer.values.grad is not None and layer.values.grad.shape == (20,), name


def _saved_bytes(backend, size: int, nnz: int, tokens: int = 16) -> int:
    """Bytes autograd keeps for backward beyond tensors that already exist (weight, input, values)."""
    weight = torch.randn(size, size)
    index = sample_positions(size * size, nnz, torch.Generator().manual_seed(0))
    values = torch.zeros(nnz, requires_grad=True)
    x = torch.randn(tokens, size, requires_grad=True)
    existing = {t.untyped_storage().data_ptr() for t in (weight, index, values, x)}
    saved = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in existing:
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        backend.linear(x, weight, None, values, index)
    return sum(saved)


def _largest_allocation(backend, size: int, nnz: int, tokens: int = 4) -> int:
    """Largest single CPU allocation of one forward+backward, from the profiler's memory records."""
    weight = torch.randn(size, size)
    index = sample_positions(size * size, nnz, torch.Generator().manual_seed(0))
    values = torch.zeros(nnz, requires_grad=True)
    x = torch.randn(tokens, size, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        backend.linear(x, weight, None, values, index).sum().backward()
    return max(e.cpu_memory_usage for e in prof.events())


def test_memory_does_not_grow_with_matrix_size_at_fixed_nnz():
    small, large = 64, 1024                      # 4 KiB entries vs 1 Mi entries, same 50 trainable
    for name, backend in CPU_BACKENDS.items():
        assert _saved_bytes(backend, small, 50) == _saved_bytes(backend, large, 50), name
    # The sparse paths (split forward / input gradient with any SDDMM) allocate nothing of the matrix's
    # size; the dense reference allocates the dense delta and its gradient (so the probe can fail).
    matrix_bytes = large * large * 4
    for fwd, sddmm in itertools.product(("inplace", "split"), ("sampled_addmm", "gather")):
        # (tiles: row blocks, bounded by its chunk size rather than by nnz)
        assert _largest_allocation(TorchBackend(fwd, sddmm), large, 50) < matrix_bytes / 16, (fwd, sddmm)
    assert _largest_allocation(DenseBackend(), large, 50) >= matrix_bytes


def test_inplace_strategy_restores_the_weight_bit_for_bit():
    from rmpeft.sparse.indexing import weight_with_delta

    index, weight, bias, values, x, gy = _problem(20, 30, 150, seed=8, dtype=torch.float32)
    weight = nn.Parameter(weight, requires_grad=False)
    snapshot, version = weight.detach().clone(), weight._version
    v = (values * 1e3).requires_grad_(True)                         # (w + v) - v loses w's low bits
    y = TorchBackend("inplace", "gather").linear(x, weight, bias, v, index)
    patched = weight.detach().clone()
    patched.view(-1)[index.long()] += v.detach()
    torch.testing.assert_close(y, torch.nn.functional.linear(x, patched, bias))
    y.backward(gy)
    assert torch.equal(weight, snapshot) and weight._version == version and weight.grad is None
    with pytest.raises(KeyError):
        with weight_with_delta(weight, v.detach(), index, torch.float32, in_place=True) as w:
            assert w is weight and not torch.equal(weight, snapshot)
            raise KeyError("interrupted")
    assert torch.equal(weight, snapshot)
    # another compute dtype (autocast) or a non-contiguous weight: a merged copy, the weight untouched
    with weight_with_delta(weight, v.detach(), index, torch.bfloat16, in_place=True) as w:
        assert w is not weight and w.dtype == torch.bfloat16 and torch.equal(weight, snapshot)


def test_layer_state_is_values_and_int32_positions():
    base = nn.Linear(300, 200)
    layer = MaskedLinear(base, sample_positions(60000, 1234, torch.Generator().manual_seed(0)), TorchBackend())
    assert layer.index.dtype == torch.int32
    state = layer_state_bytes(nn.Sequential(layer))
    assert state == {"values": 1234 * 4, "positions": 1234 * 4}
    assert [n for n, _ in layer.named_parameters()] == ["values", "base_layer.weight", "base_layer.bias"]


def test_optimizer_state_size_equals_formula():
    from rmpeft.bench.steps import optimizer_state_bytes
    from tests.helpers import expected_state_bytes

    layers = [MaskedLinear(nn.Linear(40, 30).requires_grad_(False),
                           sample_positions(1200, n, torch.Generator().manual_seed(n)), TorchBackend())
              for n in (7, 100, 1200)]
    model = nn.ModuleList(layers)
    params = [m.values for m in layers]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        x = torch.randn(5, 40)
        sum(m(x).square().mean() for m in layers).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    nnz = 7 + 100 + 1200
    assert optimizer_state_bytes(opt) == 2 * 4 * nnz + 4 * len(params)     # two fp32 moments + step counters
    total = 2 * sum(p.numel() * 4 for p in params) + optimizer_state_bytes(opt) + layer_state_bytes(model)["positions"]
    assert total == expected_state_bytes([7, 100, 1200], 4, 4 * nnz) == 20 * nnz + 12


@pytest.fixture(autouse=True)
def strategy_cache(tmp_path, monkeypatch):
    """Every test: decisions stored in a fresh folder; this process' memory of them cleared before and after."""
    monkeypatch.setattr(strategy_tuning, "_cache_dir", tmp_path)
    monkeypatch.setattr(strategy_tuning, "_cache_dir_set", True)
    strategy_tuning.reset_strategy_decisions()
    yield tmp_path / strategy_tuning.CACHE_FILE
    strategy_tuning.reset_strategy_decisions()


def _counted_candidates(calls):
    def fast():
        calls["a"] += 1

    def slow():
        calls["b"] += 1
        torch.randn(300, 300) @ torch.randn(300, 300)

    return {"a": fast, "b": slow}


def test_strategy_tuning_caches_one_decision_per_key(strategy_cache):
    calls = {"a": 0, "b": 0}
    cands = _counted_candidates(calls)
    assert strategy_tuning.choose(("k",), cands, torch.device("cpu")) == "a"
    before = dict(calls)
    assert strategy_tuning.choose(("k",), cands, torch.device("cpu")) == "a"
    assert calls == before                       # cached: nothing re-timed
    assert strategy_tuning.strategy_decisions() == {"k": "a"}


def test_strategy_decisions_are_stored_per_machine_and_reused(strategy_cache):
    calls = {"a": 0, "b": 0}
    cands = _counted_candidates(calls)
    assert strategy_tuning.choose(("k", 1), cands, torch.device("cpu")) == "a"
    stored = json.loads(strategy_cache.read_text())
    key = f"k/1 @ {strategy_tuning.machine(torch.device('cpu'))}"
    assert stored == {key: "a"} and f"{torch.get_num_threads()} threads" in key and torch.__version__ in key
    # A new process (memory cleared) reads the stored decision instead of measuring, even one that a
    # measurement here would not make.
    strategy_cache.write_text(json.dumps({key: "b"}))
    strategy_tuning.reset_strategy_decisions()
    before = dict(calls)
    assert strategy_tuning.choose(("k", 1), cands, torch.device("cpu")) == "b" and calls == before
    # Another thread count is another machine: measured again, and both decisions kept.
    threads = torch.get_num_threads()
    strategy_tuning.reset_strategy_decisions()
    try:
        torch.set_num_threads(threads + 1)
        assert strategy_tuning.choose(("k", 1), cands, torch.device("cpu")) == "a" and calls != before
    finally:
        torch.set_num_threads(threads)
    assert len(json.loads(strategy_cache.read_text())) == 2
    # A stored name that is no candidate here (an older version's) is measured again.
    strategy_cache.write_text(json.dumps({key: "gone"}))
    strategy_tuning.reset_strategy_decisions()
    assert strategy_tuning.choose(("k", 1), cands, torch.device("cpu")) == "a"


def test_strategy_memory_only_and_unwritable_cache(strategy_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(strategy_tuning, "_cache_dir_set", False)
    monkeypatch.setattr(strategy_tuning, "_cache_dir", None)
    monkeypatch.setenv("RMPEFT_CACHE", str(tmp_path / "env"))
    assert strategy_tuning.strategy_cache_file() == tmp_path / "env" / strategy_tuning.CACHE_FILE
    strategy_tuning.set_strategy_cache_dir(None)
    assert strategy_tuning.strategy_cache_file() is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    strategy_tuning.set_strategy_cache_dir(blocker / "sub")            # cannot be created: no error
    strategy_tuning.reset_strategy_decisions()
    try:
        assert strategy_tuning.choose(("u",), _counted_candidates({"a": 0, "b": 0}), torch.device("cpu")) == "a"
    finally:
        strategy_tuning.reset_strategy_decisions()


def test_csr_structure_is_reused_until_the_index_changes():
    from rmpeft.sparse.indexing import crow_indices, csr_structure, rows_cols

    index = sample_positions(7 * 5, 9, torch.Generator().manual_seed(0))
    crow, cols = csr_structure(index, (7, 5))
    rows, want_cols = rows_cols(index, 5)
    assert torch.equal(crow, crow_indices(rows, 7)) and torch.equal(cols, want_cols)
    assert csr_structure(index, (7, 5))[0] is crow                      # kept on the index tensor
    index.copy_(sample_positions(7 * 5, 9, torch.Generator().manual_seed(1)))   # changed in place: rebuilt
    crow2, _ = csr_structure(index, (7, 5))
    assert crow2 is not crow and torch.equal(crow2, crow_indices(rows_cols(index, 5)[0], 7))
    assert torch.equal(csr_structure(index, (5, 7))[0], crow_indices(rows_cols(index, 7)[0], 5))


def test_strategy_decision_keeps_the_default_within_the_margin():
    times = {"rule": [1.0, 1.0, 5.0], "other": [0.95, 0.92, 0.1]}        # medians 1.0 vs 0.92
    assert strategy_tuning.decide(times, "rule") == "rule"
    assert strategy_tuning.decide(times, None) == "other"
    assert strategy_tuning.decide({"rule": [1.0] * 3, "other": [0.8] * 3}, "rule") == "other"
    assert strategy_tuning.decide({"rule": [1.0] * 3, "other": [0.8] * 3}, "missing") == "other"


def test_strategy_measure_skips_failing_and_drops_slow_candidates():
    calls = {"a": 0, "b": 0}

    def broken():
        raise RuntimeError("no kernel for this dtype")

    times = strategy_tuning.measure({"x": broken, **_counted_candidates(calls)}, torch.device("cpu"), reps=5)
    assert set(times) == {"a", "b"} and len(times["a"]) == 5
    assert len(times["b"]) < 5                                         # far slower: dropped after a round
    with pytest.raises(RuntimeError, match="no kernel"):
        strategy_tuning.measure({"x": broken}, torch.device("cpu"))


def test_sample_positions_is_exact_distinct_sorted_and_seeded():
    for numel, count in [(1000, 0), (1000, 1), (1000, 30), (1000, 700), (1000, 1000), (10**7, 500)]:
        pos = sample_positions(numel, count, torch.Generator().manual_seed(1))
        assert pos.numel() == count and pos.dtype == torch.int32
        assert torch.all(pos[1:] > pos[:-1]) and (count == 0 or (pos.min() >= 0 and pos.max() < numel))
    a = sample_positions(10**6, 100, torch.Generator().manual_seed(1))
    b = sample_positions(10**6, 100, torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)


def test_sample_positions_is_uniform():
    """Each position's inclusion frequency is count/numel (both sampling regimes)."""
    for numel, count in [(40, 2), (40, 30)]:
        hits = torch.zeros(numel)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3000):
            hits[sample_positions(numel, count, gen).long()] += 1
        freq = hits / 3000
        assert torch.allclose(freq, torch.full_like(freq, count / numel), atol=0.04), (numel, count)


@pytest.mark.parametrize("path", ["numpy", "conditioned-binomials"])
def test_split_count_exact_and_hypergeometric(path, monkeypatch):
    import rmpeft.sparse.mask_sampling as sampling

    if path != "numpy":                          # the path used beyond 1e9 entries, on a small population
        monkeypatch.setattr(sampling, "_NUMPY_MAX_POPULATION", 0)
    sizes = [100, 300, 600]
    draws = torch.tensor([split_count(200, sizes, s) for s in range(600)], dtype=torch.float64)
    assert torch.all(draws.sum(1) == 200) and torch.all(draws >= 0)
    torch.testing.assert_close(draws.mean(0), torch.tensor([20.0, 60.0, 120.0], dtype=torch.float64), rtol=0.04, atol=0)
    # Hypergeometric variance n K/N (1-K/N) (N-n)/(N-1) of the first part: 200*0.1*0.9*800/999 = 14.4.
    assert draws[:, 0].var().item() == pytest.approx(14.4, rel=0.2)


def test_split_count_beyond_numpy_population_limit():
    big = split_count(12_853_473, [5120 * 5120] * 80, 0)         # OPT-13b's q/v at 0.1%: 2.1e9 entries
    mean, sd = 12_853_473 / 80, (12_853_473 / 80) ** 0.5
    assert sum(big) == 12_853_473 and all(abs(c - mean) < 6 * sd for c in big)
    assert split_count(5, [10], 0) == [5]
    with pytest.raises(ValueError):
        split_count(11, [10], 0)


def test_column_selection_rounding():
    gen = torch.Generator().manual_seed(0)
    order = column_order([4, 4, 4], "head", gen)
    assert order[:4] == [(0, 0), (1, 0), (2, 0), (0, 1)]
    assert len(take_columns(order, [10, 10, 10], 24)) == 2      # 2.4 columns -> 2
    assert len(take_columns(order, [10, 10, 10], 25)) == 3      # 2.5 -> 3 (ties add)
    assert len(take_columns(order, [10, 10, 10], 1)) == 1       # at least one column
    rand = column_order([4, 4, 4], "random", gen)
    assert sorted(rand) == sorted(order) and rand != order


def test_unknown_and_unavailable_backends():
    with pytest.raises(RmpeftError, match="unknown method.backend 'cusparse'.*valid choices: auto, dense, spops"):
        get_backend("cusparse", "cpu")
    if "triton" not in available_backends("cpu"):
        with pytest.raises(RmpeftError, match="method.backend 'triton' cannot run on cpu.*available here: torch"):
            get_backend("triton", "cpu")
    if "spops" not in available_backends("cpu"):
        with pytest.raises(RmpeftError, match="method.backend 'spops' cannot run on cpu: spops is not installed"):
            get_backend("spops", "cpu")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernel_matches_dense_in_interpreter():
    """The Triton SDDMM kernel, run by Triton's CPU interpreter, against the dense reference."""
    code = """
import torch
from rmpeft.sparse import get_backend
from rmpeft.sparse.dense import DenseBackend
from rmpeft.sparse.mask_sampling import sample_positions
for o, i, nnz, n in [(7, 5, 9, 6), (33, 17, 200, 70), (16, 12, 1, 3), (5, 7, 0, 4), (40, 3, 120, 130)]:
    g = torch.Generator().manual_seed(o)
    idx = sample_positions(o * i, nnz, g)
    w, b, v = torch.randn(o, i, generator=g), torch.randn(o, generator=g), torch.randn(nnz, generator=g)
    x, gy = torch.randn(n, i, generator=g), torch.randn(n, o, generator=g)
    out = []
    for be in (get_backend("triton", "cpu"), DenseBackend()):
        vv, xx = v.clone().requires_grad_(), x.clone().requires_grad_()
        y = be.linear(xx, w, b, vv, idx)
        gx, gv = torch.autograd.grad(y, (xx, vv), gy, allow_unused=True)
        out.append((y, gx, torch.zeros_like(v) if gv is None else gv))
    for a, r in zip(*out):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
print("triton ok")
"""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "triton ok" in proc.stdout, proc.stderr[-2000:]


class _FakeSpops:
    """spops' documented API (csr_add, sddmm on int32 offsets / int16 rows and columns), in plain torch."""

    calls = 0

    @staticmethod
    def _check(row_offsets, row_indices, col_indices):
        assert row_offsets.dtype == torch.int32 and row_indices.dtype == col_indices.dtype == torch.int16
        counts = torch.diff(row_offsets)[row_indices.long()]
        assert torch.all(counts[:-1] >= counts[1:])              # rows sorted by length, longest first

    @classmethod
    def csr_add(cls, values, row_offsets, row_indices, col_indices, dense):
        cls._check(row_offsets, row_indices, col_indices)
        cls.calls += 1
        out = dense.clone()
        rows = torch.repeat_interleave(torch.arange(dense.shape[0]), torch.diff(row_offsets).long())
        out[rows, col_indices.long()] += values
        return out

    @classmethod
    def sddmm(cls, row_offsets, row_indices, col_indices, a, bt):
        cls._check(row_offsets, row_indices, col_indices)
        rows = torch.repeat_interleave(torch.arange(a.shape[0]), torch.diff(row_offsets).long())
        return (a.float() @ bt.float().T)[rows, col_indices.long()]


def test_spops_adapter_against_its_api(monkeypatch):
    import rmpeft.sparse.spops_backend as sb

    monkeypatch.setattr(sb, "SPOPS", _FakeSpops)
    monkeypatch.setattr(sb, "SPOPS_MISSING", None)
    backend = sb.SpopsBackend()
    assert backend.unavailable_reason(torch.device("cpu")) is None
    for out_f, in_f, nnz in [(7, 5, 9), (33, 17, 200), (16, 12, 1)]:
        index, weight, bias, values, x, gy = _problem(out_f, in_f, nnz, seed=7, dtype=torch.float32)
        base = nn.Linear(in_f, out_f)
        with torch.no_grad():
            base.weight.copy_(weight), base.bias.copy_(bias)
        layer = MaskedLinear(base.requires_grad_(False), index, backend)
        assert layer.spops_col_indices.dtype == torch.int16
        with torch.no_grad():
            layer.values.copy_(values)
        ref = _run(DenseBackend(), index, weight, bias, values, x, gy)
        before = _FakeSpops.calls
        xx = x.clone().requires_grad_()
        y = layer(xx)
        gx, gv = torch.autograd.grad(y, (xx, layer.values), gy)
        assert _FakeSpops.calls > before                         # the spops kernels did the work
        for a, r in zip((y, gx, gv), ref):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    # a dimension above spops' int16 limit falls back to the torch backend
    assert not backend.supports(40000, 16, torch.device("cuda")) and backend.supports(32767, 16, torch.device("cuda"))
    wide = MaskedLinear(nn.Linear(40000, 2).requires_grad_(False),
                        sample_positions(80000, 30, torch.Generator().manual_seed(0)), backend)
    assert not hasattr(wide, "spops_row_offsets")
    calls = _FakeSpops.calls
    wide(torch.randn(3, 40000)).sum().backward()
    assert _FakeSpops.calls == calls and wide.values.grad.shape == (30,)


def test_auto_times_the_candidates_and_takes_the_fastest(monkeypatch):
    import rmpeft.sparse.selection as auto

    monkeypatch.setattr(auto, "AUTO_TOKENS", 64)
    assert auto.resolve_auto(torch.device("cpu"), [(32, 16)], [40], torch.float32) == ("torch", {})
    monkeypatch.setattr(auto, "candidates", lambda device, shape: ["torch", "dense"])
    name, timings = auto.resolve_auto(torch.device("cpu"), [(32, 16), (32, 16), (8, 8)], [40, 50, 2], torch.float32)
    assert set(timings) == {"torch", "dense"} and name == min(timings, key=timings.get)
    assert auto.resolve_auto(torch.device("meta"), [(32, 16)], [40], torch.float32) == ("torch", {})


def test_use_backend_switches_every_masked_layer_and_restores_them():
    from rmpeft.sparse import patch, use_backend

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    own = TorchBackend()
    patch(model, {"0": MaskedLinear(model[0], torch.arange(0, 48, 3, dtype=torch.int32), own),
                  "2": MaskedLinear(model[2], torch.arange(0, 16, 2, dtype=torch.int32), get_backend("dense", "cpu"))})
    with torch.no_grad():
        model[0].values.normal_()
    x = torch.randn(5, 6)
    expected = model(x)
    with use_backend(model, "dense") as switched:
        assert switched == 1 and model[0].backend.name == "dense" and model[2].backend.name == "dense"
        torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)
    assert model[0].backend is own and model[2].backend.name == "dense"
    with pytest.raises(RuntimeError), use_backend(model, "dense"):
        raise RuntimeError("inside the block")
    assert model[0].backend is own                       # restored after an error too
    with pytest.raises(RmpeftError, match="unknown sparse backend 'auto'"), use_backend(model, "auto"):
        pass
