"""``rmpeft-preview``: print a task's rendered examples as JSON lines, exactly what the model sees.

    rmpeft-preview task=rte task.data_dir=/data/superglue/RTE n=3
    {"prompt": "...\\nDoes this mean that \\"...\\" is true? Yes or No?\\n", "candidates": ["Yes", "No"], "gold": 1}
    ...
    {"split_sizes": {"train": 1000, "validation": 500, "test": 277}}
"""

from __future__ import annotations

import json
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from rmpeft.config import CONF_DIR, run_hydra_command
from rmpeft.data import Example, load_splits
from rmpeft.errors import USAGE_EXIT, RmpeftError, unknown_choice

SPLITS = ("train", "validation", "test")


def example_record(ex: Example) -> dict[str, Any]:
    """The JSON object printed for one example."""
    out: dict[str, Any] = {"prompt": ex.prompt, "candidates": ex.candidates, "gold": ex.gold}
    if ex.answers is not None:
        out["answers"] = ex.answers
    if "gold_set" in ex.meta:
        out["gold_set"] = ex.meta["gold_set"]
    return out


def preview_lines(cfg: DictConfig) -> list[str]:
    """The JSON lines of a preview: ``cfg.n`` examples of ``cfg.split``, then the split sizes."""
    split = str(cfg.get("split", "train"))
    if split not in SPLITS:
        raise unknown_choice("split", split, SPLITS)
    n = cfg.get("n", 3)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise RmpeftError(f"n must be an integer >= 0, got {n!r}")
    splits = load_splits(cfg.task, int(cfg.data_seed))
    lines = [json.dumps(example_record(ex), ensure_ascii=False) for ex in splits[split][:n]]
    lines.append(json.dumps({"split_sizes": {k: len(splits[k]) for k in SPLITS}}))
    return lines


# An absolute config path: Hydra resolves "../conf" against the *module* (pkg://conf) when the entry
# point runs as a console script, and the conf/ folder is not a Python package.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="preview")
def hydra_main(cfg: DictConfig) -> None:
    try:
        lines = preview_lines(cfg)
    except RmpeftError as e:
        print(f"rmpeft-preview: error: {e}", file=sys.stderr)
        sys.exit(USAGE_EXIT)
    for line in lines:
        print(line)


def main() -> None:
    run_hydra_command("rmpeft-preview", hydra_main, groups=("task",), config_name="preview")


if __name__ == "__main__":
    main()
