"""Figure 4 panels from run records: sharpness and distance versus trainable share, accuracy versus epochs.

Each function takes run records (:class:`~rmpeft.records.RunRecord` objects or dicts, or
``(source, record)`` pairs as returned by :func:`rmpeft.reporting.sources.load_records`), uses the
finished runs that carry the needed field, draws one
subplot per (experiment, model, task), writes ``<out_dir>/<name>.png`` and ``.pdf`` and returns
both paths. Points are means over seeds, with the sample standard deviation as error bars when
there are several seeds. Runs of one method with different settings (LoRA ``r=8`` and ``r=16``) are
separate series named by the differing fields (``lora (r=16)``), never averaged together.

- :func:`plot_sharpness` (Fig. 4a): Hessian norm (the power iteration's ‖Hv‖ estimate) before training (one dashed line per
  method; the initial point does not depend on the learning rate) and after training (one line per
  method and learning rate), versus trainable share.
- :func:`plot_distance` (Fig. 4b): ‖θ_final − θ_init‖ versus trainable share, one line per method
  and learning rate.
- :func:`plot_epochs` (Fig. 4b, the longer-training experiment): test metric versus training length
  (``trainer.epochs``; one run per length, as in ``sweeps/fig4b.yaml``) and, dashed, the validation
  metric after each epoch of the longest runs; one colour per method, ratio and learning rate.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

from rmpeft.errors import RmpeftError
from rmpeft.identity import digest
from rmpeft.records import RunRecord, setting_identity
from rmpeft.reporting.aggregate import mean_std
from rmpeft.reporting.runs import GroupKey, variants_of

Record = RunRecord


def _records(records: Iterable[Any]) -> list[Record]:
    out = []
    for item in records:
        rec = item[1] if isinstance(item, tuple) else item
        if isinstance(rec, dict):
            rec = RunRecord.from_dict(rec)
        if isinstance(rec, RunRecord) and rec.status == "finished":
            out.append(rec)
    return out


def _method_names(recs: list[Record], ignore: tuple[str, ...] = ()) -> dict[int, str]:
    """``id(record) -> 'lora'`` or ``'lora (r=16)'`` when the method has several settings (the fields
    in ``ignore`` are varied on purpose by the figure and do not count)."""
    entries, keys = [], {}
    for rec in recs:
        tree = setting_identity(rec.config)
        for dotted in ignore:
            *parents, leaf = dotted.split(".")
            node: Any = tree
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(leaf, None)
        ratio = rec.get("method.ratio")
        entry = (str(rec.get("model.name")), str(rec.get("method.name")), None if ratio is None else float(ratio),
                 str(rec.get("task.name")), digest(tree), tree)
        entries.append(entry)
        keys[id(rec)] = GroupKey(entry[0], entry[3], entry[1], entry[2], entry[4])
    variant = variants_of(entries).variant
    names = {}
    for rec in recs:
        v = variant[keys[id(rec)]]
        names[id(rec)] = str(rec.get("method.name")) + (f" ({v})" if v else "")
    return names


def _panel(rec: Record) -> tuple[str, str, str]:
    return (str(rec.get("name", "default")), str(rec.get("model.name", "?")), str(rec.get("task.name", "?")))


def _share_percent(rec: Record) -> float | None:
    """Trainable share in percent, to 3 significant digits so seeds of one ratio share an x value."""
    share = rec.trainable_share
    return None if share is None else float(f"{100.0 * float(share):.3g}")


def _lr(rec: Record) -> float:
    return float(rec.get("optim.lr", math.nan))


def _hessian_norm(rec: Record, phase: str) -> float | None:
    """The spectral-norm estimate ‖Hv‖ (``norm``), else |eigenvalue| (records written without it)."""
    entry = (rec.hessian or {}).get(phase) or {}
    value = entry.get("norm", entry.get("eigenvalue"))
    return None if value is None or not math.isfinite(float(value)) else abs(float(value))


Series = dict[str, dict[float, list[float]]]     # label -> x -> values over seeds
Panels = dict[tuple[str, str, str], Series]      # (experiment, model, task) -> series


def _draw(panels: Panels, styles: dict[str, dict[str, Any]], *, xlabel: str,
          ylabel: str, title: str, logx: bool, logy: bool, out_dir: Path, name: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(panels)
    fig, axes = plt.subplots(1, len(keys), figsize=(5.0 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label in sorted(panels[key]):
            points = sorted(panels[key][label].items())
            xs = [x for x, _ in points]
            stats = [mean_std(v) for _, v in points]
            style = dict(styles.get(label, {"marker": "o"}))
            yerr = [s or 0.0 for _, s in stats] if style.pop("errorbars", True) else None   # one seed: no bar
            ax.errorbar(xs, [m for m, _ in stats], yerr=yerr, label=label, capsize=3, **style)
        experiment, model, task = key
        ax.set_title(f"{title}: {model} / {task}" + ("" if experiment in ("", "default") else f" ({experiment})"),
                     fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def _collect(recs: list[Record], points: Callable[[Record], list[tuple[str, float, float]]],
             panel: Callable[[Record], tuple[str, str, str]] = _panel) -> Panels:
    panels: dict[tuple[str, str, str], Series] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for rec in recs:
        for label, x, y in points(rec):
            panels[panel(rec)][label][x].append(y)
    return {k: {label: dict(xs) for label, xs in v.items()} for k, v in panels.items()}


LR_MARKERS = ("o", "^", "v", "D", "P", "X", "*")


def _method_styles(labels: set[str]) -> dict[str, dict[str, Any]]:
    """One colour per method; 'before' dashed with squares, 'after' solid with one marker per LR."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    methods = sorted({label.split(" ")[0].rstrip(",") for label in labels})
    color = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    styles: dict[str, dict[str, Any]] = {}
    marker_of: dict[str, int] = defaultdict(int)
    for label in sorted(labels):
        method = label.split(" ")[0].rstrip(",")
        if label.endswith(" before"):
            styles[label] = {"marker": "s", "linestyle": "--", "color": color[method], "mfc": "none"}
        else:
            styles[label] = {"marker": LR_MARKERS[marker_of[method] % len(LR_MARKERS)], "color": color[method]}
            marker_of[method] += 1
    return styles


def _sharpness_points(rec: Record, method: str) -> list[tuple[str, float, float]]:
    share, out = _share_percent(rec), []
    if share is None:
        return out
    before, after = _hessian_norm(rec, "before"), _hessian_norm(rec, "after")
    if before is not None:
        out.append((f"{method} before", share, before))
    if after is not None:
        out.append((f"{method} after, lr={_lr(rec):g}", share, after))
    return out


def _distance_points(rec: Record, method: str) -> list[tuple[str, float, float]]:
    dist, share = rec.distance_from_init, _share_percent(rec)
    if dist is None or share is None or not math.isfinite(float(dist)):
        return []
    return [(f"{method}, lr={_lr(rec):g}", share, float(dist))]


def _series_name(rec: Record, method: str) -> str:
    ratio = rec.get("method.ratio")
    return method + ("" if ratio is None else f" r={float(ratio):g}") + f", lr={_lr(rec):g}"


def sharpness_panels(records: Iterable[Any]) -> Panels:
    """|λ_max| over seeds: '<method> before' and '<method> after, lr=<lr>' series versus share (%)."""
    recs = _records(records)
    names = _method_names(recs)
    return _collect(recs, lambda rec: _sharpness_points(rec, names[id(rec)]))


def distance_panels(records: Iterable[Any]) -> Panels:
    """distance_from_init over seeds: '<method>, lr=<lr>' series versus share (%)."""
    recs = _records(records)
    names = _method_names(recs)
    return _collect(recs, lambda rec: _distance_points(rec, names[id(rec)]))


def epoch_panels(records: Iterable[Any]) -> Panels:
    """Per (model, task), for every '<method> r=<ratio>, lr=<lr>' series:

    - '<series>: test' — test metric (%) versus training length ``trainer.epochs``, over seeds (the
      longer-training experiment runs one config per length);
    - '<series>: val per epoch' — validation metric (%) after each epoch of the series' longest runs.

    Panels pool experiment names (``fig4b-e5``, ``fig4b-e10``, ...), which differ only in length.
    """
    recs = _records(records)
    methods = _method_names(recs, ignore=("trainer.epochs",))
    longest: dict[tuple, int] = defaultdict(int)
    for rec in recs:
        key = (rec.get("model.name"), rec.get("task.name"), _series_name(rec, methods[id(rec)]))
        longest[key] = max(longest[key], len(rec.epochs or []))

    def points(rec: Record) -> list[tuple[str, float, float]]:
        name, out = _series_name(rec, methods[id(rec)]), []
        length = rec.get("trainer.epochs")
        if rec.test_metric is not None and length is not None and math.isfinite(float(rec.test_metric)):
            out.append((f"{name}: test", float(length), 100.0 * float(rec.test_metric)))
        epochs = rec.epochs or []
        if epochs and len(epochs) == longest[(rec.get("model.name"), rec.get("task.name"), name)]:
            out += [(f"{name}: val per epoch", float(e["epoch"]), 100.0 * float(e["val_metric"])) for e in epochs
                    if e.get("val_metric") is not None and math.isfinite(float(e["val_metric"]))]
        return out

    panels = _collect(recs, points, panel=lambda rec: ("", str(rec.get("model.name", "?")),
                                                       str(rec.get("task.name", "?"))))
    return panels


def _epoch_styles(labels: set[str]) -> dict[str, dict[str, Any]]:
    """One colour per series; test points solid with markers, per-epoch validation dashed and thin."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    names = sorted({label.rsplit(": ", 1)[0] for label in labels})
    color = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    return {label: ({"marker": "o", "color": color[label.rsplit(": ", 1)[0]]} if label.endswith(": test") else
                    {"linestyle": "--", "linewidth": 0.8, "alpha": 0.7, "errorbars": False,
                     "color": color[label.rsplit(": ", 1)[0]]})
            for label in labels}


def plot_sharpness(records: Iterable[Any], out_dir: Path) -> list[Path]:
    """Fig. 4a: Hessian norm before/after training versus trainable share (%)."""
    panels = sharpness_panels(records)
    if not panels:
        raise RmpeftError("no finished run record has Hessian results; train with analysis.hessian=true "
                          "or run rmpeft-hessian RUN_DIR on saved runs")
    styles = _method_styles({label for series in panels.values() for label in series})
    return _draw(panels, styles, xlabel="trainable parameters (%)", ylabel="Hessian norm |λ_max|",
                 title="Sharpness", logx=True, logy=True, out_dir=out_dir, name="fig4a_sharpness")


def plot_distance(records: Iterable[Any], out_dir: Path) -> list[Path]:
    """Fig. 4b: L2 distance between initial and final trainable parameters versus trainable share (%)."""
    panels = distance_panels(records)
    if not panels:
        raise RmpeftError("no finished run record has distance_from_init")
    return _draw(panels, {}, xlabel="trainable parameters (%)", ylabel="‖θ_final − θ_init‖₂",
                 title="Distance from init", logx=True, logy=True, out_dir=out_dir, name="fig4b_distance")


def plot_epochs(records: Iterable[Any], out_dir: Path) -> list[Path]:
    """Fig. 4b: test metric (%) versus training length, and validation metric per epoch, one colour
    per method, ratio and learning rate."""
    panels = epoch_panels(records)
    if not panels:
        raise RmpeftError("no finished run record has a test metric or per-epoch validation metrics")
    styles = _epoch_styles({label for series in panels.values() for label in series})
    return _draw(panels, styles, xlabel="epochs", ylabel="metric (%)", title="Accuracy vs epochs",
                 logx=False, logy=False, out_dir=out_dir, name="fig4b_epochs")
