"""The examples ``rmpeft-eval`` scores, as a local lm-evaluation-harness task (``rmpeft-lm-eval-task``).

    rmpeft-lm-eval-task DELTA_OR_ADAPTER --out TASK_DIR [--split test] [overrides as for rmpeft-eval]

writes ``TASK_DIR/examples.jsonl`` (one line per example: ``context`` = the first token's text plus the
rendered prompt, ``choices`` = the candidates, ``gold``), ``TASK_DIR/<task>.yaml`` (a
``multiple_choice`` task over that file through the ``json`` dataset builder: no network) and
``TASK_DIR/rmpeft_task.json`` (the facts, and which lm-eval metric is rmpeft's own). rmpeft predicts
the candidate with the highest mean log-probability per candidate token; lm-eval's ``acc`` takes the
sum, ``acc_bytes`` the sum per UTF-8 byte. ``acc`` is rmpeft's accuracy when every candidate is one
token, ``acc_bytes`` when the tokenizer is byte-level (one token per byte, as ``tiny-opt``'s); other
tokenizers get neither exactly. Running lm-eval needs the ``lm-eval`` extra (``pip install
'rmpeft[lm-eval]'``); writing the task does not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rmpeft.errors import RmpeftError
from rmpeft.models import model_source, set_first_token

TASK_FILE = "rmpeft_task.json"
EXAMPLES_FILE = "examples.jsonl"


def load_tokenizer(cfg: DictConfig) -> Any:
    """The run's tokenizer (its first token set as the run sets it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_source(cfg.model, str(cfg.cache_dir)),
                                              revision=cfg.model.get("revision") or None)
    set_first_token(tokenizer, cfg.model.get("first_token_id"))
    return tokenizer


def matching_metric(tokenizer: Any, candidates: list[str]) -> str | None:
    """The lm-eval metric that is rmpeft's accuracy on these candidates (None: none exactly)."""
    counts = [(len(tokenizer(c, add_special_tokens=False)["input_ids"]), len(c.encode("utf-8"))) for c in candidates]
    if all(n == 1 for n, _ in counts):
        return "acc"
    if all(n == b for n, b in counts):
        return "acc_bytes"
    return None


def write_task(cfg: DictConfig, folder: Path | str, split: str = "test") -> dict[str, Any]:
    """Write the local task of ``cfg``'s ``split`` examples into ``folder``; returns its facts."""
    from rmpeft.objectives import objective_type

    folder = Path(folder)
    if str(cfg.task.get("kind")) not in ("classification", "multiple_choice"):
        raise RmpeftError(f"task '{cfg.task.name}' is a {cfg.task.get('kind')} task; an lm-eval multiple_choice "
                          "task needs candidates (classification or multiple choice)")
    examples = objective_type(cfg.task).load_splits(cfg.task, int(cfg.data_seed))[split]
    if not examples:
        raise RmpeftError(f"task '{cfg.task.name}' has no {split} examples")
    tokenizer = load_tokenizer(cfg)
    bos = tokenizer.bos_token_id
    prefix = tokenizer.decode([bos]) if bos is not None else ""
    probe = examples[0].prompt
    want = ([bos] if bos is not None else []) + tokenizer(probe, add_special_tokens=False)["input_ids"]
    if tokenizer(prefix + probe, add_special_tokens=False)["input_ids"] != want:
        raise RmpeftError(f"the tokenizer of '{cfg.model.name}' does not read its first token ({prefix!r}) back from "
                          "text; lm-eval would see other tokens than rmpeft")
    name = f"rmpeft_{cfg.task.name}_{split}".replace("-", "_")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / EXAMPLES_FILE, "w") as f:
        for ex in examples:
            gold = ex.meta.get("gold_set") or ex.gold
            f.write(json.dumps({"context": prefix + ex.prompt, "choices": list(ex.candidates), "gold": gold}) + "\n")
    yaml = "\n".join([
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str((folder / EXAMPLES_FILE).resolve()))}",
        "test_split: test",
        "output_type: multiple_choice",
        "doc_to_text: context",
        "doc_to_choice: choices",
        "doc_to_target: gold",
        'target_delimiter: ""',
        "metric_list:",
        *[f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true" for m in ("acc", "acc_norm", "acc_bytes")],
        "metadata:",
        "  version: 1.0",
        "",
    ])
    (folder / f"{name}.yaml").write_text(yaml)
    facts = {"task": name, "split": split, "examples": len(examples), "rmpeft_task": str(cfg.task.name),
             "matching_metric": matching_metric(tokenizer, sorted({c for ex in examples for c in ex.candidates})),
             "first_token": prefix, "base_model": model_source(cfg.model, str(cfg.cache_dir))}
    (folder / TASK_FILE).write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rmpeft-lm-eval-task", description="Write the examples rmpeft-eval scores "
                                 "as a local lm-evaluation-harness task (docs/deltas.md).")
    ap.add_argument("delta", type=Path, help="a delta folder or a peft adapter folder")
    ap.add_argument("overrides", nargs="*", help="as for rmpeft-eval (task=<name>, task.num_test=200, ...)")
    ap.add_argument("--out", type=Path, required=True, help="the task folder to write")
    ap.add_argument("--split", choices=("test", "validation"), default="test")
    args = ap.parse_args(argv)
    try:
        from rmpeft.deltas.evaluate import eval_config
        from rmpeft.deltas.peft_import import open_any

        delta = open_any(args.delta, args.overrides)
        cfg = eval_config(delta, [] if getattr(delta, "composed", False) else args.overrides)
        facts = write_task(cfg, args.out, args.split)
    except RmpeftError as e:
        print(f"rmpeft-lm-eval-task: error: {e}", file=sys.stderr)
        return 2
    metric = facts["matching_metric"] or "none exactly (see docs/deltas.md)"
    print(f"{args.out}: task {facts['task']}, {facts['examples']} examples; rmpeft's accuracy is lm-eval's {metric}\n"
          f"lm_eval --model hf --model_args pretrained={facts['base_model']},peft={args.delta},add_bos_token=False "
          f"--include_path {args.out} --tasks {facts['task']} --device cpu")
    return 0

