"""The Section 5 simulation: measurements agree with linear algebra and respect the paper's statements."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from rmpeft import theory
from rmpeft.errors import RmpeftError

SMALL = dict(n=10, d=400, ps=(0.1, 0.3, 1.0), draws=2, noise_draws=12, seed=3)


@pytest.fixture(scope="module")
def rows():
    return theory.simulate(theory.TheoryConfig(**SMALL))


def _problem(seed=0, n=10, d=300, p=0.3):
    rng = np.random.default_rng(seed)
    x = theory.make_features(n, d, "rademacher", rng)
    mask = theory.draw_mask(d, p, rng)
    y = rng.standard_normal(n)
    return x, mask, y, rng


@pytest.mark.parametrize("seed,p,features", [(0, 0.1, "rademacher"), (1, 0.5, "uniform"), (2, 1.0, "rademacher")])
def test_power_iteration_lambda_max_equals_eigvalsh(seed, p, features):
    rng = np.random.default_rng(seed)
    x = theory.make_features(12, 500, features, rng)
    assert np.abs(x).max() <= 1.0
    mask = theory.draw_mask(500, p, rng)
    lam, iters = theory.power_top_eigenvalue(lambda v: theory.hessian_vector_product(x, mask, v), 500, rng,
                                             iters=5000, tol=1e-13)
    exact = np.linalg.eigvalsh(theory.masked_gram(x, mask))[-1]
    assert iters < 5000
    assert lam == pytest.approx(exact, rel=1e-8)


def test_masked_gram_is_x_m_xt():
    x, mask, _, _ = _problem()
    assert np.allclose(theory.masked_gram(x, mask), x @ np.diag(mask) @ x.T)


def test_residual_recursion_is_the_gradient_descent_residual():
    x, mask, y, _ = _problem()
    gram, lr = theory.masked_gram(x, mask), 1e-3
    w, r = np.zeros(x.shape[1]), -y
    for _ in range(5):
        w = w - lr * mask * (x.T @ (x @ (mask * w) - y))
        r = r - lr * gram @ r
    assert np.allclose(x @ (mask * w) - y, r)


def test_divergence_test_brackets_two_over_lambda_max():
    x, mask, y, _ = _problem()
    gram = theory.masked_gram(x, mask)
    lr_crit = 2.0 / np.linalg.eigvalsh(gram)[-1]
    assert not theory.gd_diverges(gram, y, 0.97 * lr_crit, 2000)
    assert theory.gd_diverges(gram, y, 1.03 * lr_crit, 2000)


def test_bisected_lr_within_a_few_percent_of_two_over_lambda_max(rows):
    for row in rows:
        for draw in row.draws:
            assert draw["lr_bisect"] == pytest.approx(draw["lr_theory"], rel=0.02)


def test_lambda_max_concentrates_within_theorem_bound(rows):
    for row in rows:
        assert row.max_deviation <= row.thm51_bound
    assert rows[-1].lam1 == pytest.approx(rows[-1].p_lam1_full, rel=1e-8)   # p = 1: no mask


def test_gd_solution_is_the_min_norm_interpolant():
    x, mask, y, _ = _problem(p=0.5)
    gram = theory.masked_gram(x, mask)
    w, steps, ok = theory.gd_solution(x, mask, y, 1.0 / np.linalg.eigvalsh(gram)[-1], 1e-12, 100_000)
    assert ok and steps > 1
    assert np.allclose(w, np.linalg.pinv(x * mask) @ y, atol=1e-9)
    assert np.all(w[mask == 0] == 0)          # masked coordinates never move


def test_solution_norm_respects_the_lower_bound(rows):
    for row in rows:
        for draw in row.draws:
            assert draw["converged"] and draw["rank"] == SMALL["n"]
            assert draw["sq_norm_gd"] >= draw["prop53_bound"]
            assert draw["sq_norm_expected"] >= draw["prop53_bound"]
        # the Monte-Carlo mean of GD solutions estimates the closed-form expectation
        assert row.sq_norm_gd == pytest.approx(row.sq_norm_expected, rel=0.25)


def test_sparser_masks_flatter_larger_lr_further_solutions(rows):
    lam = [r.lam1 for r in rows]
    lr = [r.lr_bisect for r in rows]
    norm = [r.sq_norm_expected for r in rows]
    assert lam == sorted(lam)                        # p ascending -> λ₁ ascending
    assert lr == sorted(lr, reverse=True)
    assert norm == sorted(norm, reverse=True)


def test_seeded(rows):
    again = theory.simulate(theory.TheoryConfig(**SMALL))
    assert [r.lam1 for r in again] == [r.lam1 for r in rows]
    other = theory.simulate(theory.TheoryConfig(**{**SMALL, "seed": 4, "ps": (0.3,), "draws": 1}))
    assert other[0].lam1 != rows[1].lam1


@pytest.mark.parametrize("override,match", [
    (dict(d=10), "must exceed --n"),
    (dict(ps=(0.0, 0.5)), r"\(0, 1\]"),
    (dict(features="gaussian"), "valid choices: rademacher, uniform"),
    (dict(delta=1.5), "--delta"),
])
def test_bad_input_is_a_one_line_error(override, match):
    with pytest.raises(RmpeftError, match=match):
        theory.simulate(theory.TheoryConfig(**{**SMALL, **override}))


def test_cli_writes_table_csv_and_plot(tmp_path, capsys):
    rc = theory.main(["--n", "6", "--d", "120", "--p", "0.25,1", "--draws", "1", "--noise-draws", "3",
                      "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[0].startswith("| p | λ₁(XMXᵀ)")
    assert len([line for line in out.splitlines() if line.startswith("| 0.25 ") or line.startswith("| 1 ")]) == 2
    for name in ("theory.md", "theory.csv", "theory.png", "theory.pdf"):
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "theory.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [float(r["p"]) for r in table] == [0.25, 1.0]
    assert float(table[0]["lr_ratio"]) == pytest.approx(1.0, rel=0.02)


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert theory.main(["--n", "50", "--d", "40", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--d must exceed --n" in err
