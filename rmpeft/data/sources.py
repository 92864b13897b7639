"""Where a task's raw records come from: local official files (``task.data_dir``) or the Hugging
Face Hub (``task.source``). The readers and row mappers themselves are in :mod:`rmpeft.data.readers`;
which one a task uses is its :class:`~rmpeft.data.tasks.TaskSpec`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rmpeft.data.formats import DataFileError, require_file
from rmpeft.data.tasks import TaskSpec, get_task
from rmpeft.errors import RmpeftError

log = logging.getLogger(__name__)

Raw = dict[str, Any]


def _reader(spec: TaskSpec) -> Callable[[Path, str], list[Raw]]:
    if spec.read is None:
        raise RmpeftError(f"task '{spec.name}' has no official files to read (task.data_dir is not used)")
    return spec.read


class MappedRows(Sequence):
    """A Hub split seen through a row mapper, converted on access (only sampled rows are touched)."""

    def __init__(self, rows: Sequence[dict], mapper: Callable[[dict], Raw], origin: str):
        self.rows, self.mapper, self.origin = rows, mapper, origin

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = self.rows[int(i)]
        try:
            return self.mapper(row)
        except (KeyError, TypeError) as e:
            raise RmpeftError(f"{self.origin}: row {i} does not have the expected fields ({e}); "
                              f"found: {', '.join(sorted(row))}") from None

    def __iter__(self) -> Iterator[Raw]:
        return (self[i] for i in range(len(self)))


def hub_rows(task: str, rows: Sequence[dict], origin: str = "hub") -> MappedRows:
    """Raw records of a Hub split (any sequence of row dicts, e.g. a ``datasets.Dataset``)."""
    spec = get_task(task, "text")
    if spec.hub is None:
        raise RmpeftError(f"task '{task}' has no Hugging Face Hub source")
    return MappedRows(rows, spec.hub, origin)


def load_local(task: str, data_dir: str | Path, files: Any, roles: Sequence[str] = ("train", "test")) -> dict[str, list[Raw]]:
    """``{"train": ..., "test": ...}`` raw records from ``data_dir`` (``files.train``, ``files.test``; only
    the ``roles`` asked for)."""
    reader = _reader(get_task(task, "text"))
    folder = Path(str(data_dir)).expanduser()
    if not folder.is_dir():
        raise DataFileError(f"task.data_dir '{data_dir}' is not a folder")
    out = {}
    for role in roles:
        name = files.get(role) if files is not None else None
        if not name:
            raise RmpeftError(f"task.files.{role} is not set (the file name inside task.data_dir)")
        path = require_file(folder / str(name), f"task.files.{role} in task.data_dir={data_dir}")
        out[role] = reader(path, role)
        log.info("read %d %s records from %s", len(out[role]), task, path)
    return out


def load_hub(task: str, source: Any) -> dict[str, Sequence[Raw]]:
    """``{"train": ..., "test": ...}`` raw records via ``datasets.load_dataset`` (downloads on first use)."""
    from datasets import load_dataset

    if source is None or not source.get("path"):
        raise RmpeftError(f"task '{task}' has neither task.data_dir nor task.source.path")
    path, name, revision = source.get("path"), source.get("name"), source.get("revision")
    out: dict[str, Sequence[Raw]] = {}
    for role, key in (("train", "train_split"), ("test", "test_split")):
        split = source.get(key) or role
        origin = f"{path}" + (f"/{name}" if name else "") + f" [{split}]"
        try:
            rows = load_dataset(path, name, revision=revision, split=split)
        except Exception as e:  # datasets raises many types; report one line with the source named
            reason = f"{type(e).__name__}: {e}".splitlines()[0]
            raise RmpeftError(f"could not load {origin} from the Hugging Face Hub "
                              f"(task.source, revision={revision or 'main'}): {reason}") from e
        out[role] = hub_rows(task, rows, origin)
    return out


def load_raw(task_cfg: Any) -> dict[str, Sequence[Raw]]:
    """Raw train and test pools of a task config: generated in code when the task says so, else local
    files when ``data_dir`` is set, else the Hub. With ``task.test_pool_share`` set, only the test file
    of local data is read (both pools come from it, see :func:`rmpeft.data.loading.load_pools`)."""
    spec = get_task(str(task_cfg.get("name")), "text")
    if spec.pools is not None:
        return spec.pools(task_cfg)
    data_dir = task_cfg.get("data_dir")
    if data_dir:
        roles = ("test",) if task_cfg.get("test_pool_share") is not None else ("train", "test")
        return load_local(spec.name, data_dir, task_cfg.get("files"), roles)
    return load_hub(spec.name, task_cfg.get("source"))
