"""Power iteration on Hessian-vector products recovers known Hessian eigenvalues."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.function import once_differentiable

from rmpeft.analysis.hessian import HVP_MODES, autograd_hvp, top_eigenvalue
from rmpeft.errors import RmpeftError

MODES = ("autograd", "finite_difference")


def _spd(n: int, eigs: list[float], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def _dense_quadratic(dtype=torch.float64):
    """0.5 θᵀAθ + bᵀθ over two tensors (3x4 matrix + 5-vector); top eigenvalue 10."""
    eigs = [10.0, 7.0, 6.5] + [1.0 + 0.2 * i for i in range(14)]
    a = _spd(17, eigs, seed=1)
    gen = torch.Generator().manual_seed(2)
    b = torch.randn(17, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 4, generator=gen, dtype=dtype).requires_grad_()
    u = torch.randn(5, generator=gen, dtype=dtype).requires_grad_()

    def loss_fn():
        theta = torch.cat([w.reshape(-1), u]).to(torch.float64)
        return 0.5 * theta @ a @ theta + b @ theta

    return loss_fn, [w, u], a


@pytest.mark.parametrize("mode", MODES)
def test_dense_quadratic_top_eigenvalue(mode):
    loss_fn, params, a = _dense_quadratic()
    before = [p.detach().clone() for p in params]
    res = top_eigenvalue(loss_fn, params, iters=500, tol=1e-10, seed=0, hvp=mode)
    assert res["hvp"] == mode
    assert res["converged"]
    assert res["eigenvalue"] == pytest.approx(torch.linalg.eigvalsh(a).max().item(), rel=1e-6)
    assert len(res["history"]) == res["iterations"] <= 500
    assert res["num_params"] == 17
    for p, q in zip(params, before):          # parameters are left exactly as they were
        assert torch.equal(p.detach(), q)


def test_float32_parameters_finite_difference():
    loss_fn, params, _ = _dense_quadratic(dtype=torch.float32)
    res = top_eigenvalue(loss_fn, params, iters=300, tol=1e-7, seed=0, hvp="finite_difference")
    assert res["eigenvalue"] == pytest.approx(10.0, rel=1e-3)


def test_largest_magnitude_eigenvalue_keeps_its_sign():
    a = _spd(6, [-7.0, 3.0, 2.0, 1.0, 0.5, 0.1], seed=3)
    theta = torch.ones(6, dtype=torch.float64, requires_grad=True)
    res = top_eigenvalue(lambda: 0.5 * theta @ a @ theta, [theta], iters=400, tol=1e-10, seed=1)
    assert res["eigenvalue"] == pytest.approx(-7.0, rel=1e-6)


def test_norm_is_right_when_eigenvalues_of_both_signs_tie():
    """Eigenvalues ±5 (as for a bilinear coupling): ‖Hv‖ finds 5, the residual flags the Rayleigh quotient."""
    a = _spd(5, [5.0, -5.0, 1.0, 0.5, -0.2], seed=4)
    theta = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    res = top_eigenvalue(lambda: 0.5 * theta @ a @ theta, [theta], iters=400, tol=1e-10, seed=0)
    assert res["norm"] == pytest.approx(5.0, rel=1e-6)
    assert abs(res["eigenvalue"]) < 5.0 - 1e-3 and res["residual"] > 0.01
    loss_fn, params, _ = _dense_quadratic()
    ok = top_eigenvalue(loss_fn, params, iters=500, tol=1e-10, seed=0)
    assert ok["norm"] == pytest.approx(10.0, rel=1e-6) and ok["residual"] < 1e-3


def test_not_converged_when_iterations_run_out():
    loss_fn, params, _ = _dense_quadratic()
    res = top_eigenvalue(loss_fn, params, iters=2, tol=1e-12, seed=0)
    assert res["iterations"] == 2 and not res["converged"]
    assert res["eigenvalue"] < 10.0           # a Rayleigh quotient never exceeds the top eigenvalue


def test_seed_fixes_the_estimate():
    loss_fn, params, _ = _dense_quadratic()
    r1 = top_eigenvalue(loss_fn, params, iters=3, tol=0.0, seed=5)
    r2 = top_eigenvalue(loss_fn, params, iters=3, tol=0.0, seed=5)
    r3 = top_eigenvalue(loss_fn, params, iters=3, tol=0.0, seed=6)
    assert r1["history"] == r2["history"] != r3["history"]


def test_unknown_mode_is_a_one_line_error():
    loss_fn, params, _ = _dense_quadratic()
    with pytest.raises(RmpeftError, match="valid choices: auto, autograd, finite_difference"):
        top_eigenvalue(loss_fn, params, hvp="lanczos")
    assert HVP_MODES == ("auto", "autograd", "finite_difference")


# --- sparse-masked parameters: a vector of values scattered into a matrix --------------------------

class _Scatter(torch.autograd.Function):
    """values -> dense (rows x cols) matrix with values at flat indices; differentiable backward."""

    @staticmethod
    def forward(ctx, values, index, shape):
        ctx.save_for_backward(index)
        out = values.new_zeros(shape[0] * shape[1])
        out[index] = values
        return out.view(shape)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.reshape(-1)[index], None, None


class _ScatterOnce(_Scatter):
    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.reshape(-1)[index], None, None


class _ScatterDetached(_Scatter):
    """A backward computed outside autograd (like a hand-written kernel): its result has no graph."""

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.detach().reshape(-1)[index].clone(), None, None


def _masked_problem(scatter):
    """0.5‖(W0 + S(values)) Z − T‖² for values at k random positions of a 6x8 matrix.

    d²L/dW_ij dW_kl = δ_ik (Z Zᵀ)_jl, so the Hessian over the values is H_ab = δ(r_a, r_b) (ZZᵀ)[c_a, c_b].
    The loss is quadratic in the values but reaches them through a (custom) scatter function.
    """
    gen = torch.Generator().manual_seed(7)
    rows, cols, k = 6, 8, 15
    index = torch.randperm(rows * cols, generator=gen)[:k]
    w0 = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    z = torch.randn(cols, 10, generator=gen, dtype=torch.float64)
    t = torch.randn(rows, 10, generator=gen, dtype=torch.float64)
    values = torch.zeros(k, dtype=torch.float64, requires_grad=True)

    def loss_fn():
        w = w0 + scatter(values, index, (rows, cols))
        return 0.5 * ((w @ z - t) ** 2).sum()

    r, c = index // cols, index % cols
    gram = z @ z.T
    h = (r[:, None] == r[None, :]).to(torch.float64) * gram[c[:, None], c[None, :]]
    return loss_fn, values, torch.linalg.eigvalsh(h).max().item()


def _index_put_scatter(values, index, shape):
    return torch.zeros(shape[0] * shape[1], dtype=values.dtype).index_put((index,), values).view(shape)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scatter", [_index_put_scatter, _Scatter.apply], ids=["index_put", "custom_fn"])
def test_sparse_masked_values_top_eigenvalue(mode, scatter):
    loss_fn, values, exact = _masked_problem(scatter)
    res = top_eigenvalue(loss_fn, [values], iters=500, tol=1e-10, seed=0, hvp=mode)
    assert res["eigenvalue"] == pytest.approx(exact, rel=1e-6)
    assert res["num_params"] == 15


@pytest.mark.parametrize("scatter", [_ScatterOnce.apply, _ScatterDetached.apply], ids=["once", "detached"])
def test_auto_falls_back_to_finite_difference_without_double_backward(scatter):
    loss_fn, values, exact = _masked_problem(scatter)
    res = top_eigenvalue(loss_fn, [values], iters=500, tol=1e-10, seed=0, hvp="auto")
    assert res["hvp"] == "finite_difference"
    assert res["fallback_reason"]
    assert res["eigenvalue"] == pytest.approx(exact, rel=1e-6)


def test_forced_autograd_raises_without_double_backward():
    loss_fn, values, _ = _masked_problem(_ScatterOnce.apply)
    with pytest.raises(RuntimeError):
        top_eigenvalue(loss_fn, [values], iters=5, hvp="autograd")


def test_auto_uses_autograd_when_it_works():
    loss_fn, values, _ = _masked_problem(_Scatter.apply)
    assert top_eigenvalue(loss_fn, [values], iters=3, hvp="auto")["hvp"] == "autograd"


# --- a non-quadratic loss: both products agree with the exact Hessian ------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_small_network_matches_exact_hessian(mode):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    params = list(net.parameters())
    shapes = [p.shape for p in params]

    def loss_fn():
        return torch.nn.functional.cross_entropy(net(x), y)

    def loss_of_flat(flat):
        chunks, i = [], 0
        for s in shapes:
            n = int(torch.tensor(s).prod())
            chunks.append(flat[i:i + n].view(s))
            i += n
        out = torch.func.functional_call(net, dict(zip([k for k, _ in net.named_parameters()], chunks)), (x,))
        return torch.nn.functional.cross_entropy(out, y)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    h = torch.autograd.functional.hessian(loss_of_flat, flat)
    eigs = torch.linalg.eigvalsh(h)
    exact = eigs[eigs.abs().argmax()].item()
    res = top_eigenvalue(loss_fn, params, iters=2000, tol=1e-12, seed=0, hvp=mode)
    assert res["converged"]
    assert res["eigenvalue"] == pytest.approx(exact, rel=1e-5)


# --- a backward that drops second-order terms without raising ---------------------------------------

class _LinearSavingIntermediate(torch.autograd.Function):
    """y = x2 @ (W + S(values)).T with x2 = x.reshape(...) computed inside forward and saved: double
    backward treats x2 as a constant, so the second-order coupling through earlier layers is lost."""

    @staticmethod
    def forward(ctx, x, weight, values, index):
        x2 = x.reshape(-1, weight.shape[1]) * 1.0
        merged = weight.clone().view(-1).index_add(0, index, values).view(weight.shape)
        ctx.save_for_backward(x2, weight, values, index)
        return x2 @ merged.T

    @staticmethod
    def backward(ctx, gy):
        x2, weight, values, index = ctx.saved_tensors
        merged = weight.clone().view(-1).index_add(0, index, values).view(weight.shape)
        gv = (gy.T @ x2).reshape(-1)[index]
        return gy @ merged, None, gv, None


def _two_layer_masked(linear):
    gen = torch.Generator().manual_seed(11)
    w1, w2 = torch.randn(8, 6, generator=gen, dtype=torch.float64), torch.randn(3, 8, generator=gen, dtype=torch.float64)
    i1, i2 = torch.randperm(48, generator=gen)[:12], torch.randperm(24, generator=gen)[:8]
    v1 = (0.5 * torch.randn(12, generator=gen, dtype=torch.float64)).requires_grad_()
    v2 = (0.5 * torch.randn(8, generator=gen, dtype=torch.float64)).requires_grad_()
    x, y = torch.randn(10, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (10,), generator=gen)

    def loss_fn():
        return torch.nn.functional.cross_entropy(linear(torch.tanh(linear(x, w1, v1, i1)), w2, v2, i2), y)

    return loss_fn, [v1, v2]


def _reference_linear(x, w, v, index):
    return x @ (w.reshape(-1).index_add(0, index, v).view(w.shape)).T


def test_auto_detects_silently_wrong_double_backward():
    exact_fn, exact_params = _two_layer_masked(_reference_linear)
    exact = top_eigenvalue(exact_fn, exact_params, iters=1000, tol=1e-12, hvp="autograd")
    loss_fn, params = _two_layer_masked(_LinearSavingIntermediate.apply)
    v = [torch.ones_like(p) for p in params]
    wrong, right = autograd_hvp(loss_fn, params)(v), autograd_hvp(exact_fn, exact_params)(v)
    assert not torch.allclose(wrong[0], right[0], rtol=0.05)       # the trap is real: no error, wrong numbers
    res = top_eigenvalue(loss_fn, params, iters=1000, tol=1e-12, hvp="auto")
    assert res["hvp"] == "finite_difference" and res["hvp_check"] > 0.05
    assert "not symmetric" in res["fallback_reason"]
    assert res["eigenvalue"] == pytest.approx(exact["eigenvalue"], rel=1e-6)
    ok = top_eigenvalue(exact_fn, exact_params, iters=1000, tol=1e-12, hvp="auto")
    assert ok["hvp"] == "autograd" and ok["hvp_check"] < 1e-4 and "fallback_reason" not in ok


# --- the project's sparse masking layers -----------------------------------------------------------

def _masked_net(backend):
    sparse = pytest.importorskip("rmpeft.sparse")
    torch.manual_seed(0)
    l1, l2 = torch.nn.Linear(6, 8).double(), torch.nn.Linear(8, 3).double()
    gen = torch.Generator().manual_seed(1)
    m1 = sparse.MaskedLinear(l1, torch.randperm(48, generator=gen)[:12].sort().values.int(), backend)
    m2 = sparse.MaskedLinear(l2, torch.randperm(24, generator=gen)[:8].sort().values.int(), backend)
    for p in [*l1.parameters(), *l2.parameters()]:
        p.requires_grad_(False)
    with torch.no_grad():
        m1.values.normal_(0, 0.5, generator=gen)
        m2.values.normal_(0, 0.5, generator=gen)
    x, y = torch.randn(10, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (10,), generator=gen)
    return (lambda: torch.nn.functional.cross_entropy(m2(torch.tanh(m1(x))), y)), [m1.values, m2.values]


def _cpu_backends():
    try:
        from rmpeft.sparse import available_backends, get_backend
    except ImportError:
        return []
    return [(name, get_backend(name, "cpu")) for name in available_backends("cpu")]


@pytest.mark.parametrize("name,backend", _cpu_backends() or [pytest.param(None, None, marks=pytest.mark.skip)])
def test_sparse_backends_give_the_dense_reference_eigenvalue(name, backend):
    from rmpeft.sparse import get_backend

    ref_fn, ref_params = _masked_net(get_backend("dense", "cpu"))
    exact = top_eigenvalue(ref_fn, ref_params, iters=1000, tol=1e-12, hvp="autograd")["eigenvalue"]
    loss_fn, params = _masked_net(backend)
    res = top_eigenvalue(loss_fn, params, iters=1000, tol=1e-12, seed=0, hvp="auto")
    # some backends accumulate the values' gradient in fp32
    assert res["eigenvalue"] == pytest.approx(exact, rel=1e-3), res.get("fallback_reason")


def test_reference_backends_compute_the_same_function_and_are_restored():
    sparse = pytest.importorskip("rmpeft.sparse")
    from rmpeft.sparse import use_backend

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    backend = sparse.get_backend("torch", "cpu")
    sparse.patch(model, {"0": sparse.MaskedLinear(model[0], torch.arange(0, 48, 3, dtype=torch.int32), backend)})
    with torch.no_grad():
        model[0].values.normal_()
    x = torch.randn(5, 6)
    expected = model(x)
    with use_backend(model, "dense") as switched:
        assert switched == 1 and model[0].backend.name == "dense"
        assert torch.allclose(model(x), expected, atol=1e-6)
    assert model[0].backend is backend


def test_torch_backend_refuses_double_backward_instead_of_silently_dropping_terms():
    """Its in-place strategies are not twice differentiable: exact sharpness uses the dense reference
    (rmpeft.analysis.sharpness), and forcing autograd through the torch backend is an error."""
    from rmpeft.sparse import get_backend

    loss_fn, params = _masked_net(get_backend("torch", "cpu"))
    with pytest.raises(RuntimeError):
        top_eigenvalue(loss_fn, params, iters=5, tol=1e-12, seed=0, hvp="autograd")
