"""The paper's vocabulary and numbers: model labels, row and column orders, and its printed tables.

Task labels are the tasks' (:class:`rmpeft.data.tasks.TaskSpec`), method labels the methods'
(``@register_method(name, label=...)``).

The printed tables live in ``paper_numbers/*.csv`` beside this module (package data, described by
``paper_numbers/README.md``) and are read through :func:`read_paper_table` only.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rmpeft.data.tasks import IMAGE_TASK_ORDER, TASK_ORDER, task_label
from rmpeft.errors import RmpeftError
from rmpeft.methods import METHODS

PAPER_NUMBERS_DIR = Path(__file__).resolve().parent / "paper_numbers"

MODELS = {"opt-125m": "OPT-125m", "opt-1.3b": "OPT-1.3b", "opt-13b": "OPT-13b", "llama2-7b": "Llama2-7b",
          "smollm2-135m": "SmolLM2-135M", "clip-vit-b16": "CLIP ViT-B/16"}
# The paper's row order, after the zero-shot reference (method=none); SHiRA is not in the paper: a
# baseline beside it.
METHOD_ORDER = ("none", "ft", "adapter", "lora", "adalora", "prefix", "bitfit", "masking", "structured_masking",
                "shira")
MASKING_METHODS = ("masking", "structured_masking")
# The trainable shares the paper sweeps (Table 5); the default ratios the predictor fills in.
PAPER_RATIOS = (0.1, 0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001, 0.00005, 0.00001)
# The paper's tables with one row per (model, method, params) and one column per task.
TASK_TABLES = ("table5_main.csv", "table8_structured.csv")
# Table 2: CLIP ViT-B/16 on image tasks (IMAGE_TASK_ORDER, in its column order); no model column.
VISION_TABLE, VISION_MODEL = "table2_vision.csv", "clip-vit-b16"


def model_label(model: str) -> str:
    return MODELS.get(model, model)


def method_label(method: str) -> str:
    """A method's label in tables and figures (the name itself for a method no longer registered)."""
    return METHODS[method].label if method in METHODS else method


def percent_text(share: float) -> str:
    """A trainable share as the paper prints it: 0.001 -> '0.1%', 1.0 -> '100%'."""
    return f"{share * 100:g}%"


def share_text(share: float | None) -> str:
    """A measured trainable share (baselines): '100%' or three decimals like the paper ('0.235%')."""
    if share is None:
        return ""
    if share == 0:
        return "0"
    return "100%" if share >= 0.99995 else f"{share * 100:.3f}%"


def lr_text(lr: float | None) -> str:
    return "" if lr is None else f"{lr:g}"


def parse_ratio(text: str) -> float:
    """'0.0002' or '0.02%' -> 0.0002."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError as e:
        raise RmpeftError(f"bad ratio '{text}'; expected a fraction (0.0002) or a percentage (0.02%)") from e
    if not 0 < value <= 1:
        raise RmpeftError(f"bad ratio '{text}'; must lie in (0, 1] (or (0%, 100%])")
    return value


def task_order(tasks: Iterable[str]) -> list[str]:
    """The paper's column order (Table 5's tasks, then Table 2's), then other tasks alphabetically."""
    known = list(TASK_ORDER) + list(IMAGE_TASK_ORDER)
    return sorted(set(tasks), key=lambda t: (known.index(t) if t in known else len(known), t))


def model_key(model: str) -> tuple[int, str]:
    known = list(MODELS)
    return (known.index(model) if model in known else len(known), model)


def row_key(model: str, method: str, ratio: float | None) -> tuple:
    """Sort key of a table row: model, then the paper's method order, then ratio descending."""
    known = list(METHOD_ORDER)
    return (model_key(model), known.index(method) if method in known else len(known), method,
            -(ratio if ratio is not None else math.inf))


def read_paper_table(name: str, folder: Path | None = None) -> list[dict[str, str]]:
    """The rows of one of the paper's printed tables (``paper_numbers/<name>``) as CSV dicts."""
    path = Path(folder or PAPER_NUMBERS_DIR) / name
    if not path.is_file():
        raise RmpeftError(f"the paper's table {name} is not in {path.parent}")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@dataclass
class PaperRow:
    model: str              # paper label, e.g. OPT-125m
    method: str             # our method name
    share: float | None     # params column as a fraction
    values: dict[str, float]  # our task name -> percent
    avg: float | None


class PaperNumbers:
    """Lookup of the paper's printed numbers by (model, method, ratio)."""

    def __init__(self, rows: list[PaperRow]):
        self.rows = rows

    @classmethod
    def load(cls, folder: Path | None = None) -> PaperNumbers:
        """Tables 5, 8 and 2 from ``folder`` (default: the numbers shipped with rmpeft)."""
        by_label = {task_label(t): t for t in TASK_ORDER + IMAGE_TASK_ORDER}
        rows = []
        for name in (*TASK_TABLES, VISION_TABLE):
            for line in read_paper_table(name, folder):
                line.setdefault("model", model_label(VISION_MODEL))
                params = (line.get("params") or "").strip()
                share = float(params.rstrip("%")) / 100 if params.endswith("%") else None
                values = {by_label[k]: float(v) for k, v in line.items() if k in by_label and v not in (None, "")}
                avg = line.get("avg")
                rows.append(PaperRow(line["model"], line["method"], share, values, float(avg) if avg else None))
        return cls(rows)

    def lookup(self, model: str, method: str, ratio: float | None) -> PaperRow | None:
        """The paper's row for our (model, method, ratio); baselines match on (model, method)."""
        label = model_label(model)
        for row in self.rows:
            if row.model != label or row.method != method:
                continue
            if ratio is None or (row.share is not None and math.isclose(row.share, ratio, rel_tol=1e-6)):
                return row
        return None
