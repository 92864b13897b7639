"""``rmpeft-theory``: the overparameterised linear model of the paper's Section 5, simulated.

(One module on purpose: a good part of it is the reconstruction below, which the simulation, the
bounds it checks and the command all refer to.)

Setting (our reading of Sec. 5.1; the extracted text lost its formulas). n samples, d > n features,
X ∈ R^{n×d} with entries in [−1, 1] (rows x_i), targets Y ∈ R^n. A random mask
M = diag(m_1..m_d), m_j ~ Bernoulli(p) i.i.d., p the trainable-parameter ratio. The pretrained weights
are folded into the targets (w_0 = 0), and gradient descent with learning rate η starts at w = 0 on

    L(w) = ½ ‖Y − X M w‖²,      ∇L(w) = M Xᵀ (X M w − Y),      ∇²L = M XᵀX M.

λ_i(A) is the i-th largest eigenvalue; λ_i without an argument means λ_i(X M Xᵀ). Because M² = M, the
nonzero eigenvalues of the Hessian M XᵀX M are those of the n×n masked Gram matrix X M Xᵀ, so the
smoothness of L is λ_1.

Theorem 5.1 (as reconstructed from the proof in App. A.3: Hoeffding's lemma for m_j − p ∈ [−p, 1−p],
|(Xᵀu)_j| ≤ √n for unit u, a 1/8-net of the unit sphere of R^n with at most 17^n points so that
‖Q‖ ≤ 2 max_k |v_kᵀ Q v_k|, a Chernoff bound, then Weyl's inequality). With probability ≥ 1 − δ, for
every i ∈ [n]:

    |λ_i(X M Xᵀ) − p λ_i(X Xᵀ)| ≤ n √(2 d (n ln 17 + ln(2/δ))).

The deviation grows like n^{3/2} d^{1/2} while λ_1(X Xᵀ) ≥ tr(X Xᵀ)/n grows like d, so the bound
is informative only for d ≫ n³; at laptop sizes it is loose, and the table prints the measured
deviation beside it.

Proposition 5.2. GD converges from every initialisation iff η < 2/λ_1. (The residual obeys
r_{t+1} = (I − η X M Xᵀ) r_t with r_t = X M w_t − Y.)

Proposition 5.3 (as reconstructed). If Y = X w* + ε with ε ~ N(0, σ² I_n) and X M Xᵀ is invertible,
GD from 0 converges to w_∞ = M Xᵀ (X M Xᵀ)^{-1} Y, so ‖w_∞‖² = Yᵀ (X M Xᵀ)^{-1} Y and

    E_ε ‖w_∞‖² = ‖(X M Xᵀ)^{-1/2} X w*‖² + σ² Σ_i 1/λ_i  ≥  n σ² / λ_1.

With Theorem 5.1 (λ_1 ≈ p λ_1(X Xᵀ)) the lower bound grows like 1/p: sparser masks end further from
the initialisation. Without full rank the same argument gives σ² rank(X M Xᵀ) / λ_1, which is printed.

What is simulated, for each p and each of ``--draws`` masks (table values are means over masks; the
deviation is the maximum over masks and i):

- λ_1 by power iteration on Hessian-vector products v ↦ M XᵀX M v (the method used for the network's
  sharpness), beside p λ_1(X Xᵀ), the largest |λ_i − p λ_i(X Xᵀ)| and Theorem 5.1's bound;
- the largest learning rate at which GD does not diverge, by doubling then bisection, beside 2/λ_1;
  a run counts as convergent when its loss after ``--stability-steps`` steps is at most its initial
  loss (the residual recursion above, an exact rewriting of the w-update, is iterated: n×n products
  instead of n×d);
- ‖w_∞‖² from GD run to convergence (η = 1/λ_1, in w-space), averaged over ``--noise-draws`` noise
  vectors, beside Proposition 5.3's lower bound.

numpy has no matrix-free eigensolver (scipy is not a dependency), hence the short power iteration.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from rmpeft.errors import RmpeftError, unknown_choice
from rmpeft.validation import check_writable_folder

FEATURES = ("rademacher", "uniform")
DEFAULT_PS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


@dataclass
class TheoryConfig:
    """Knobs of the simulation (all exposed on the command line)."""

    n: int = 20                        # samples
    d: int = 2000                      # features (d > n)
    ps: tuple[float, ...] = DEFAULT_PS  # trainable ratios, Bernoulli(p) masks
    draws: int = 3                     # masks per p
    noise_draws: int = 20              # noise vectors per mask for E‖w_∞‖²
    sigma: float = 0.5                 # noise standard deviation
    delta: float = 0.05                # Theorem 5.1's failure probability
    features: str = "rademacher"       # rademacher (±1) | uniform (U[−1, 1])
    seed: int = 0
    power_iters: int = 5000
    power_tol: float = 1e-12
    stability_steps: int = 2000        # GD steps per convergence test in the bisection
    bisect_rtol: float = 1e-3          # stop when (hi − lo) / hi is below this
    solve_rtol: float = 1e-10          # GD to ‖∇L‖ ≤ solve_rtol · ‖∇L(0)‖
    solve_max_steps: int = 100_000

    def validate(self) -> None:
        if self.n < 1:
            raise RmpeftError(f"--n must be at least 1, got {self.n}")
        if self.d <= self.n:
            raise RmpeftError(f"--d must exceed --n (overparameterised setting), got d={self.d}, n={self.n}")
        if not self.ps:
            raise RmpeftError("--p needs at least one ratio")
        bad = [p for p in self.ps if not 0.0 < p <= 1.0]
        if bad:
            raise RmpeftError(f"--p ratios must lie in (0, 1], got {bad}")
        for p in self.ps:   # a mask must keep some coordinate: an empty one has no curvature (λ₁ = 0)
            if self.d * p < 1:
                raise RmpeftError(f"--p {p:g} keeps d·p = {self.d * p:g} of the d={self.d} coordinates on average; "
                                  f"every ratio needs d·p >= 1 (here p >= {1 / self.d:g}, or a larger --d)")
        if self.features not in FEATURES:
            raise unknown_choice("feature distribution", self.features, FEATURES)
        if not 0.0 < self.delta < 1.0:
            raise RmpeftError(f"--delta must lie in (0, 1), got {self.delta}")
        if self.sigma <= 0 or self.draws < 1 or self.noise_draws < 1:
            raise RmpeftError("--sigma must be positive and --draws, --noise-draws at least 1")


# --- the model -------------------------------------------------------------------------------------

def make_features(n: int, d: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """X ∈ R^{n×d} with entries in [−1, 1]."""
    if kind == "rademacher":
        return rng.choice(np.array([-1.0, 1.0]), size=(n, d))
    if kind == "uniform":
        return rng.uniform(-1.0, 1.0, size=(n, d))
    raise unknown_choice("feature distribution", kind, FEATURES)


def draw_mask(d: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Diagonal of M: 1.0 with probability p, else 0.0."""
    return (rng.random(d) < p).astype(float)


def masked_gram(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """X M Xᵀ (n×n)."""
    xm = x[:, mask.astype(bool)]
    return xm @ xm.T


def hessian_vector_product(x: np.ndarray, mask: np.ndarray, v: np.ndarray) -> np.ndarray:
    """∇²L v = M XᵀX M v."""
    return mask * (x.T @ (x @ (mask * v)))


def power_top_eigenvalue(matvec: Callable[[np.ndarray], np.ndarray], dim: int, rng: np.random.Generator,
                         iters: int, tol: float) -> tuple[float, int]:
    """Largest-magnitude eigenvalue of a symmetric operator (Rayleigh quotient), and the iterations used."""
    v = rng.standard_normal(dim)
    v /= np.linalg.norm(v)
    lam_prev = math.nan
    for k in range(1, iters + 1):
        hv = matvec(v)
        lam = float(v @ hv)
        norm = float(np.linalg.norm(hv))
        if norm == 0.0:
            return 0.0, k
        v = hv / norm
        if abs(lam - lam_prev) <= tol * abs(lam):
            return lam, k
        lam_prev = lam
    return lam, iters


def theorem51_bound(n: int, d: int, delta: float) -> float:
    """n √(2 d (n ln 17 + ln(2/δ))): the deviation of every λ_i(XMXᵀ) from p λ_i(XXᵀ) w.p. ≥ 1 − δ."""
    return n * math.sqrt(2.0 * d * (n * math.log(17.0) + math.log(2.0 / delta)))


def gd_diverges(gram: np.ndarray, y: np.ndarray, lr: float, steps: int) -> bool:
    """True when GD from w = 0 ends with a larger loss than it started with (or a non-finite one).

    Tracks the residual r = X M w − Y, which GD maps to (I − η X M Xᵀ) r.
    """
    r = -y.copy()
    start = float(r @ r)
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(1, steps + 1):
            r = r - lr * (gram @ r)
            if step % 64 == 0 and not float(r @ r) <= 1e100 * start:   # inf and NaN fail too
                return True
        return not float(r @ r) <= start


def max_stable_lr(gram: np.ndarray, y: np.ndarray, steps: int, rtol: float) -> float:
    """Largest learning rate at which GD does not diverge: doubling from 1/tr(XMXᵀ) (always stable,
    since λ_1 ≤ trace), then bisection to relative width ``rtol``; returns the midpoint."""
    lo = 1.0 / max(float(np.trace(gram)), 1e-300)
    if gd_diverges(gram, y, lo, steps):
        raise RmpeftError("GD diverges even at 1/trace(XMXᵀ); the simulation is inconsistent")
    hi = 2.0 * lo
    while not gd_diverges(gram, y, hi, steps):
        lo, hi = hi, 2.0 * hi
    while (hi - lo) / hi > rtol:
        mid = 0.5 * (lo + hi)
        if gd_diverges(gram, y, mid, steps):
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def gd_solution(x: np.ndarray, mask: np.ndarray, y: np.ndarray, lr: float, rtol: float,
                max_steps: int) -> tuple[np.ndarray, int, bool]:
    """GD on L(w) from w = 0 until ‖∇L‖ ≤ rtol ‖∇L(0)‖: (w, steps, converged).

    ``y`` may hold several target vectors as columns (n×k): the k runs are independent and advance
    together (one matrix product per step); each must meet the criterion.
    """
    xm = x * mask
    w = np.zeros((x.shape[1],) + y.shape[1:])
    g = xm.T @ (xm @ w - y)
    g0 = np.linalg.norm(g, axis=0)
    if np.all(g0 == 0.0):
        return w, 0, True
    for step in range(1, max_steps + 1):
        w -= lr * g
        g = xm.T @ (xm @ w - y)
        if np.all(np.linalg.norm(g, axis=0) <= rtol * g0):
            return w, step, True
    return w, max_steps, False


def prop53_bound(sigma: float, rank: int, lam1: float) -> float:
    """σ² rank(XMXᵀ) / λ_1 (= n σ² / λ_1 when XMXᵀ is invertible): a lower bound on E‖w_∞‖²."""
    return sigma ** 2 * rank / lam1


def expected_sq_norm(gram: np.ndarray, signal: np.ndarray, sigma: float) -> float:
    """E_ε ‖w_∞‖² = signalᵀ K⁺ signal + σ² tr(K⁺), K = XMXᵀ, signal = X w* (closed form, for reference)."""
    k_pinv = np.linalg.pinv(gram, hermitian=True)
    return float(signal @ k_pinv @ signal + sigma ** 2 * np.trace(k_pinv))


# --- the experiment --------------------------------------------------------------------------------

@dataclass
class SimulationRow:
    """One p: means over masks (deviation: max over masks and i)."""

    p: float
    lam1: float                 # λ_1(XMXᵀ), power iteration on HVPs
    p_lam1_full: float          # p λ_1(XXᵀ)
    max_deviation: float        # max_i |λ_i(XMXᵀ) − p λ_i(XXᵀ)|
    thm51_bound: float
    lr_bisect: float            # largest convergent learning rate found by bisection
    lr_theory: float            # 2 / λ_1
    lr_ratio: float             # lr_bisect / lr_theory
    sq_norm_gd: float           # mean over noise of ‖w_∞‖² (GD)
    sq_norm_expected: float     # closed-form E‖w_∞‖²
    prop53_bound: float         # σ² rank / λ_1
    power_iters: float          # iterations power iteration used
    gd_steps: float             # GD steps until every noise draw's run converged
    all_converged: bool = True
    draws: list[dict] = field(default_factory=list, repr=False)


def _mask_rng(seed: int, p: float, draw: int) -> np.random.Generator:
    # Keyed by p's value (not its position) so adding ratios leaves the others' masks unchanged.
    return np.random.default_rng([seed, int(round(p * 1e9)), draw])


def simulate(cfg: TheoryConfig) -> list[SimulationRow]:
    """Run the whole table (seeded: same config, same numbers)."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    x = make_features(cfg.n, cfg.d, cfg.features, rng)
    w_star = rng.standard_normal(cfg.d)
    w_star /= np.linalg.norm(w_star)
    signal = x @ w_star
    noise = rng.standard_normal((cfg.noise_draws, cfg.n)) * cfg.sigma
    full_eigs = np.linalg.eigvalsh(x @ x.T)[::-1]
    bound51 = theorem51_bound(cfg.n, cfg.d, cfg.delta)
    rows = []
    for p in cfg.ps:
        draws = []
        for k in range(cfg.draws):
            mrng = _mask_rng(cfg.seed, p, k)
            mask = draw_mask(cfg.d, p, mrng)
            if not mask.any():
                raise RmpeftError(f"--p {p:g}: mask draw {k} keeps none of the d={cfg.d} coordinates (d·p = "
                                  f"{cfg.d * p:g}); use a larger --d or --p, or another --seed")
            gram = masked_gram(x, mask)
            lam1, iters = power_top_eigenvalue(lambda v: hessian_vector_product(x, mask, v), cfg.d, mrng,
                                               cfg.power_iters, cfg.power_tol)
            eigs = np.linalg.eigvalsh(gram)[::-1]
            rank = int(np.linalg.matrix_rank(gram, hermitian=True))
            y0 = signal + noise[0]
            lr_star = max_stable_lr(gram, y0, cfg.stability_steps, cfg.bisect_rtol) if lam1 > 0 else math.inf
            # one GD run per noise vector, advanced together (columns)
            w, steps, converged = gd_solution(x, mask, (signal + noise).T, 1.0 / lam1, cfg.solve_rtol,
                                              cfg.solve_max_steps)
            sq_norms = (w * w).sum(axis=0)
            draws.append(dict(
                lam1=lam1, max_deviation=float(np.max(np.abs(eigs - p * full_eigs))), lr_bisect=lr_star,
                lr_theory=2.0 / lam1, sq_norm_gd=float(np.mean(sq_norms)),
                sq_norm_expected=expected_sq_norm(gram, signal, cfg.sigma),
                prop53_bound=prop53_bound(cfg.sigma, rank, lam1), power_iters=iters,
                gd_steps=float(steps), converged=converged, rank=rank, trainable=int(mask.sum()),
            ))

        def mean(key: str) -> float:
            return float(np.mean([dr[key] for dr in draws]))

        rows.append(SimulationRow(
            p=p, lam1=mean("lam1"), p_lam1_full=p * float(full_eigs[0]),
            max_deviation=max(dr["max_deviation"] for dr in draws), thm51_bound=bound51,
            lr_bisect=mean("lr_bisect"), lr_theory=mean("lr_theory"),
            lr_ratio=float(np.mean([dr["lr_bisect"] / dr["lr_theory"] for dr in draws])),
            sq_norm_gd=mean("sq_norm_gd"), sq_norm_expected=mean("sq_norm_expected"),
            prop53_bound=mean("prop53_bound"), power_iters=mean("power_iters"), gd_steps=mean("gd_steps"),
            all_converged=all(dr["converged"] for dr in draws), draws=draws,
        ))
    return rows


# --- output ----------------------------------------------------------------------------------------

COLUMNS = [  # (SimulationRow field, Markdown header, format)
    ("p", "p", "{:g}"),
    ("lam1", "λ₁(XMXᵀ)", "{:.1f}"),
    ("p_lam1_full", "p·λ₁(XXᵀ)", "{:.1f}"),
    ("max_deviation", r"maxᵢ \|λᵢ − p·λᵢ(XXᵀ)\|", "{:.1f}"),     # '|' escaped for Markdown
    ("thm51_bound", "Thm 5.1 bound", "{:.0f}"),
    ("lr_bisect", "η* (bisection)", "{:.4g}"),
    ("lr_theory", "2/λ₁", "{:.4g}"),
    ("lr_ratio", "η*·λ₁/2", "{:.4f}"),
    ("sq_norm_gd", "‖w∞‖² (GD)", "{:.4g}"),
    ("sq_norm_expected", "E‖w∞‖²", "{:.4g}"),
    ("prop53_bound", "Prop 5.3 bound", "{:.4g}"),
]


def to_markdown(rows: list[SimulationRow], cfg: TheoryConfig) -> str:
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---:" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(fmt.format(getattr(r, f)) for f, _, fmt in COLUMNS) + " |" for r in rows]
    caption = (f"n={cfg.n}, d={cfg.d}, {cfg.features} features, σ={cfg.sigma:g}, δ={cfg.delta:g}, "
               f"{cfg.draws} mask(s) per p, {cfg.noise_draws} noise draws, seed={cfg.seed}")
    notes = [f"*{caption}. λ₁(XXᵀ) = {rows[0].p_lam1_full / rows[0].p:.1f}.*"]
    if not all(r.all_converged for r in rows):
        notes.append("*Some GD solves hit --solve-max-steps before converging.*")
    return "\n".join([head, sep, *body, "", *notes]) + "\n"


def write_csv(rows: list[SimulationRow], path: Path) -> None:
    fields = [f for f, _, _ in COLUMNS] + ["power_iters", "gd_steps", "all_converged"]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(fields)
        for r in rows:
            writer.writerow([getattr(r, f) for f in fields])


def plot(rows: list[SimulationRow], out_dir: Path) -> list[Path]:
    """Four panels versus p: λ₁, deviation vs bound, stable LR, solution norm. Returns PNG and PDF paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = [r.p for r in rows]

    def positive(values: list[float]) -> list[float]:      # log axes cannot show 0 (e.g. p = 1)
        return [v if v > 0 else math.nan for v in values]

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    ax = axes[0]
    ax.plot(p, [r.lam1 for r in rows], "o-", label="λ₁(XMXᵀ) measured")
    ax.plot(p, [r.p_lam1_full for r in rows], "k--", label="p·λ₁(XXᵀ)")
    ax.set(title="Thm 5.1: λ₁ ≈ p·λ₁(XXᵀ)", ylabel="eigenvalue")
    ax = axes[1]
    ax.plot(p, positive([r.max_deviation for r in rows]), "o-", label="max |λᵢ − p·λᵢ(XXᵀ)|")
    ax.plot(p, [r.thm51_bound for r in rows], "k--", label="Thm 5.1 bound")
    ax.set(title="Thm 5.1: deviation", ylabel="deviation")
    ax = axes[2]
    ax.plot(p, [r.lr_bisect for r in rows], "o-", label="η* (bisection)")
    ax.plot(p, [r.lr_theory for r in rows], "k--", label="2/λ₁ (Prop 5.2)")
    ax.set(title="Prop 5.2: largest stable LR", ylabel="learning rate")
    ax = axes[3]
    ax.plot(p, [r.sq_norm_gd for r in rows], "o-", label="‖w∞‖² (GD, mean)")
    ax.plot(p, [r.sq_norm_expected for r in rows], ":", label="E‖w∞‖² (closed form)")
    ax.plot(p, [r.prop53_bound for r in rows], "k--", label="Prop 5.3 bound")
    ax.set(title="Prop 5.3: distance of the solution", ylabel="squared norm")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("trainable ratio p")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "theory.png", out_dir / "theory.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def parse_args(argv: list[str] | None) -> tuple[TheoryConfig, Path, bool]:
    d = TheoryConfig()
    ap = argparse.ArgumentParser(
        prog="rmpeft-theory",
        description="Simulate the paper's Section 5 (masked overparameterised least squares) and compare "
                    "Theorem 5.1, Propositions 5.2 and 5.3 with measurements.")
    ap.add_argument("--n", type=int, default=d.n, help="samples (default %(default)s)")
    ap.add_argument("--d", type=int, default=d.d, help="features, d > n (default %(default)s)")
    ap.add_argument("--p", type=_ratios, default=d.ps, metavar="P1,P2,...",
                    help="trainable ratios (default %s)" % ",".join(f"{x:g}" for x in d.ps))
    ap.add_argument("--draws", type=int, default=d.draws, help="masks per ratio (default %(default)s)")
    ap.add_argument("--noise-draws", type=int, default=d.noise_draws,
                    help="noise vectors per mask for the solution norm (default %(default)s)")
    ap.add_argument("--sigma", type=float, default=d.sigma, help="noise std (default %(default)s)")
    ap.add_argument("--delta", type=float, default=d.delta,
                    help="Theorem 5.1 failure probability (default %(default)s)")
    ap.add_argument("--features", default=d.features, help="rademacher | uniform (default %(default)s)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--stability-steps", type=int, default=d.stability_steps,
                    help="GD steps per convergence test in the bisection (default %(default)s)")
    ap.add_argument("--bisect-rtol", type=float, default=d.bisect_rtol)
    ap.add_argument("--out", type=Path, default=Path("results/theory"),
                    help="folder for theory.md, theory.csv, theory.png/.pdf (default %(default)s)")
    ap.add_argument("--no-plot", action="store_true", help="skip the figure")
    a = ap.parse_args(argv)
    cfg = TheoryConfig(n=a.n, d=a.d, ps=a.p, draws=a.draws, noise_draws=a.noise_draws, sigma=a.sigma,
                       delta=a.delta, features=a.features, seed=a.seed, stability_steps=a.stability_steps,
                       bisect_rtol=a.bisect_rtol)
    return cfg, a.out, not a.no_plot


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, out, with_plot = parse_args(argv)
        check_writable_folder(out, f"--out {out}")
        rows = simulate(cfg)
    except RmpeftError as e:
        print(f"rmpeft-theory: error: {e}", file=sys.stderr)
        return 2
    table = to_markdown(rows, cfg)
    print(table, end="")
    out.mkdir(parents=True, exist_ok=True)
    (out / "theory.md").write_text(table)
    write_csv(rows, out / "theory.csv")
    written = [out / "theory.md", out / "theory.csv"]
    if with_plot:
        written += plot(rows, out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
