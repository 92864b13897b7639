"""The task registry: one :class:`TaskSpec` per task, in the paper's table order.

A task is its entry here plus its ``conf/task/<name>.yaml``: the entry names the task kind (which
picks the training objective and metric, see :mod:`rmpeft.objectives`), the reader of its official
files, the mapper of its Hugging Face Hub rows, its prompt template and its column label in tables.
An image task's entry names its kind and label; its class names and prompt templates are in
:mod:`rmpeft.vision.classes`, its files are read by :mod:`rmpeft.vision.layouts`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmpeft.data import readers as r
from rmpeft.data import templates as t
from rmpeft.data.example import Example
from rmpeft.data.synthetic import synthetic_pools
from rmpeft.errors import unknown_choice

Raw = dict[str, Any]


@dataclass(frozen=True)
class TaskSpec:
    """One task: how its raw records are read and rendered.

    ``template`` renders a raw record as an :class:`Example` (None for an image task);
    ``read(path, role)`` reads one official file (``role``: the split it serves, ``train`` or
    ``test``); ``hub`` maps one Hub row to a raw record; ``pools(task_cfg)``, when set, generates
    the train and test pools in code instead (no files, no Hub). ``label`` is its column header in
    tables and figures (the paper's, for its tasks); ``in_paper`` marks the paper's tasks (their
    registry order is the paper's table order); ``modality`` is what its examples are (``text``,
    ``image``: the objective of its kind says the same, :attr:`rmpeft.objectives.Objective.modality`).
    """

    name: str
    kind: str
    template: Callable[[Raw], Example] | None
    label: str
    read: Callable[[Path, str], list[Raw]] | None = None
    hub: Callable[[dict], Raw] | None = None
    pools: Callable[[Any], dict[str, Sequence[Raw]]] | None = None
    in_paper: bool = True
    modality: str = "text"


def _file(reader: Callable[[Path], list[Raw]]) -> Callable[[Path, str], list[Raw]]:
    """A reader whose files do not depend on the split they serve."""
    return lambda path, role: reader(path)


_SPECS = (  # in the paper's table order (Table 5 columns)
    TaskSpec("sst2", "classification", t.sst2, "SST-2", _file(r.read_sst2), r.pick("sentence")),
    TaskSpec("rte", "classification", t.rte, "RTE", _file(r.read_rte), r.pick("premise", "hypothesis")),
    TaskSpec("wsc", "classification", t.wsc, "WSC", _file(r.read_wsc), r.pick("text", "span1_text", "span2_text")),
    TaskSpec("wic", "classification", t.wic, "WiC", _file(r.read_wic), r.pick("word", "sentence1", "sentence2")),
    TaskSpec("cb", "classification", t.cb, "CB", _file(r.read_cb), r.pick("premise", "hypothesis")),
    TaskSpec("boolq", "classification", t.boolq, "BoolQ", _file(r.read_boolq), r.pick("question", "passage")),
    TaskSpec("multirc", "classification", t.multirc, "MultiRC", _file(r.read_multirc),
             r.pick("paragraph", "question", "answer")),
    TaskSpec("copa", "multiple_choice", t.copa, "COPA", _file(r.read_copa), r.hub_copa),
    TaskSpec("record", "multiple_choice", t.record, "ReCoRD", _file(r.read_record_task), r.hub_record),
    TaskSpec("squad", "generation", t.squad, "SQuAD", _file(r.read_squad), r.hub_squad),
    TaskSpec("drop", "generation", t.drop, "DROP", r.read_drop_split, r.hub_drop),
    TaskSpec("synthetic", "classification", t.synthetic, "synthetic", pools=synthetic_pools, in_paper=False),
)
_IMAGE_SPECS = (  # in the paper's column order (Table 2), then the offline task
    TaskSpec("cifar10", "image_classification", None, "CIFAR10", modality="image"),
    TaskSpec("gtsrb", "image_classification", None, "GTSRB", modality="image"),
    TaskSpec("mnist", "image_classification", None, "MNIST", modality="image"),
    TaskSpec("svhn", "image_classification", None, "SVHN", modality="image"),
    TaskSpec("resisc45", "image_classification", None, "RESISC45", modality="image"),
    TaskSpec("digits", "image_classification", None, "digits", in_paper=False, modality="image"),
)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS + _IMAGE_SPECS}
# The paper's 11 text tasks in its table order (Table 5); every text task (the paper's, then the offline ones).
TASK_ORDER: tuple[str, ...] = tuple(spec.name for spec in _SPECS if spec.in_paper)
TASK_NAMES: tuple[str, ...] = tuple(spec.name for spec in _SPECS)
# The paper's image tasks in its column order (Table 2); every image task.
IMAGE_TASK_ORDER: tuple[str, ...] = tuple(spec.name for spec in _IMAGE_SPECS if spec.in_paper)
IMAGE_TASKS: tuple[str, ...] = tuple(spec.name for spec in _IMAGE_SPECS)
KINDS: dict[str, str] = {spec.name: spec.kind for spec in TASKS.values()}


def get_task(name: str, modality: str | None = None) -> TaskSpec:
    """The spec of task ``name`` (of ``modality``, when given); an unknown name raises a one-line error
    listing the tasks (of that modality)."""
    known = {n: spec for n, spec in TASKS.items() if modality in (None, spec.modality)}
    if name not in known:
        raise unknown_choice("task", name, known)
    return known[name]


def task_label(name: str) -> str:
    """The column label of task ``name`` in tables and figures (the name itself for an unknown task)."""
    return TASKS[name].label if name in TASKS else name
