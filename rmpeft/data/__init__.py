"""Tasks: the task registry (:mod:`rmpeft.data.tasks`), loading raw examples (hub or local official
files), sampling the paper's splits, and rendering them with the MeZO prompt templates into
:class:`Example` objects."""

from __future__ import annotations

from rmpeft.data.example import Example
from rmpeft.data.loading import load_splits
from rmpeft.data.tasks import KINDS, TASK_NAMES, TASK_ORDER, TaskSpec, get_task

__all__ = ["Example", "KINDS", "TASK_NAMES", "TASK_ORDER", "TaskSpec", "get_task", "load_splits"]
