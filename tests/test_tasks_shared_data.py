"""Every real SuperGLUE/GLUE file in ../shared/data parses and renders (skipped when the folder is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rmpeft.data import load_splits
from tests.helpers import read_local_file
from rmpeft.data.loading import render

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")

FOLDERS = {"SST-2": "sst2", "RTE": "rte", "CB": "cb", "BoolQ": "boolq", "WSC": "wsc", "WiC": "wic",
           "MultiRC": "multirc", "COPA": "copa", "ReCoRD": "record"}


def manifest() -> list[dict]:
    return json.loads((SHARED_DATA / "MANIFEST.json").read_text())


def shared_files() -> list[tuple[str, Path]]:
    if not SHARED_DATA.is_dir():
        return []
    return [(FOLDERS[p.parent.name], p) for p in sorted(SHARED_DATA.glob("*/*"))
            if p.parent.name in FOLDERS and p.suffix in (".jsonl", ".tsv")]


@pytest.mark.parametrize("task,path", shared_files(), ids=lambda x: getattr(x, "name", x))
def test_real_file_parses_and_renders(task, path):
    raw = read_local_file(task, path, "train" if "train" in path.name else "test")
    examples = [render(task, r) for r in raw]
    entry = next(m for m in manifest() if m["file"] == f"data/{path.parent.name}/{path.name}")
    if task in ("multirc", "record"):  # one example per answer option / per query
        assert len(examples) >= entry["records"]
    else:
        assert len(examples) == entry["records"]
        counts: dict[int, int] = {}
        for e in examples:
            counts[e.gold] = counts.get(e.gold, 0) + 1
        assert sorted(counts.values()) == sorted(entry["labels"].values())
    for e in examples:
        assert e.prompt and e.candidates and 0 <= e.gold < len(e.candidates)
        assert "@placeholder" not in "".join(e.candidates)


@pytest.mark.parametrize("folder,sizes", [("RTE", (1000, 500, 277)), ("CB", (150, 100, 56)), ("COPA", (300, 100, 100)),
                                          ("WSC", (454, 100, 104)), ("WiC", (1000, 500, 638)),
                                          ("SST-2", (1000, 500, 872))])
def test_real_splits_follow_the_protocol(folder, sizes):
    task = FOLDERS[folder]
    cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "task" / f"{task}.yaml"),
                          {"data_dir": str(SHARED_DATA / folder)})
    splits = load_splits(cfg, data_seed=0)
    assert tuple(len(splits[k]) for k in ("train", "validation", "test")) == sizes
    train_ids = {e.meta["index"] for e in splits["train"]}
    assert not train_ids & {e.meta["index"] for e in splits["validation"]}
