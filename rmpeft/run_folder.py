"""What lives in a run folder, the folder's claim, and the permissions of what is written there.

**Layout.** ``record.json`` (the run's record), ``delta/`` (its trained delta), ``.lock`` (the claim
of a live run). A forced rerun of a run that has a result writes ``record.next.json`` and
``delta.next/`` beside it and :func:`promote_next` moves them over the old ones only when the rerun
has a result of its own, so an interrupted or failed rerun never costs the old result.

**Claim.** A run holds ``<run_dir>/.lock`` while it runs: the file is created with ``O_CREAT | O_EXCL``
(atomic on local file systems and on NFS v3 or later), holds who made it, and its modification time is
the run's heartbeat. A second launch of the same run finds the lock fresh and stops with one line; a
lock whose heartbeat is older than the stale period (its run was killed) is taken over by renaming it
away first, which only one of several racing launches can do. File systems where ``O_EXCL`` or
``rename`` are not atomic (some FUSE and object-store mounts) do not give this guarantee.

**Permissions.** Temporary files and folders are created private (``mkstemp``/``mkdtemp``: 0600/0700)
and moved into place; :func:`share_like_umask` gives them the mode an ordinary file or folder would
get under the process's umask, so a group sharing a results folder reads each other's results.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from rmpeft.errors import RmpeftError

RECORD_FILE = "record.json"
NEXT_RECORD_FILE = "record.next.json"
DELTA_DIR = "delta"
NEXT_DELTA_DIR = "delta.next"
LOCK_FILE = ".lock"

_UMASK = os.umask(0)
os.umask(_UMASK)


def slurm_job_name(job_id: str) -> str:
    """How a claim names a SLURM job: ``<job>_<array task>``, or ``<job>_`` outside an array (submitit's
    job ids are ``<job>_<array task>`` or ``<job>``)."""
    return job_id if "_" in job_id else f"{job_id}_"


def _job_id() -> str | None:
    """This process's SLURM job (array task included); the same after a requeue."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    return f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}" if job else None


def share_like_umask(path: Path | str, fd: int | None = None) -> None:
    """Give a file (0666) or folder (0777) the mode the umask leaves, as ``open``/``mkdir`` would."""
    mode = (0o777 if Path(path).is_dir() else 0o666) & ~_UMASK
    if fd is not None:
        os.fchmod(fd, mode)
    else:
        os.chmod(path, mode)


def delta_folder_to_write(folder: Path) -> Path:
    """Where a run writes its delta: beside the old one (``delta.next``) while it is a forced rerun
    (it writes ``record.next.json``), else ``delta``."""
    folder = Path(folder)
    return folder / (NEXT_DELTA_DIR if (folder / NEXT_RECORD_FILE).exists() else DELTA_DIR)


def promote_next(folder: Path) -> None:
    """Make a forced rerun's result the run's: ``delta.next`` replaces ``delta`` (the old one is moved
    aside first and removed after), then ``record.next.json`` replaces ``record.json`` atomically."""
    folder = Path(folder)
    new_delta, delta = folder / NEXT_DELTA_DIR, folder / DELTA_DIR
    if new_delta.exists():
        aside = folder / f".{DELTA_DIR}.old-{uuid.uuid4().hex}"
        if delta.exists():
            os.rename(delta, aside)
        os.rename(new_delta, delta)
        shutil.rmtree(aside, ignore_errors=True)
    os.replace(folder / NEXT_RECORD_FILE, folder / RECORD_FILE)


def discard_next_delta(folder: Path) -> None:
    """Remove a forced rerun's ``delta.next`` that did not become the run's delta."""
    shutil.rmtree(Path(folder) / NEXT_DELTA_DIR, ignore_errors=True)


class RunLock:
    """The exclusive claim of one run folder (see the module docstring). ``ended_job``: a SLURM job
    (:func:`slurm_job_name`) known to have ended, whose claim is taken over at once wherever it ran."""

    def __init__(self, folder: Path, stale_after_s: float, ended_job: str | None = None) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.stale_after_s = stale_after_s
        self.ended_job = ended_job
        self.token = uuid.uuid4().hex
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_UMASK)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"token": self.token, "pid": os.getpid(), "host": socket.gethostname(), "job": _job_id(),
                       "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}, f)
        return True

    def _holder_is_gone(self) -> bool:
        """The claim's holder is known dead: a process of this host that no longer exists, this very
        SLURM job before it was requeued (time limit or preemption), or a SLURM job known to have ended."""
        try:
            info = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False
        if info.get("job") and info.get("job") in (_job_id(), self.ended_job):
            return True
        if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
            return False
        try:
            os.kill(info["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:   # alive, another user's
            return False
        return False

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started_at')}"
        except (OSError, ValueError):
            return "another launch"

    def acquire(self) -> RunLock:
        """Claim the folder; raises a one-line :class:`RmpeftError` while another live run holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RmpeftError(f"cannot create the run folder {self.path.parent}: {e.strerror}") from None
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                continue   # released or taken over meanwhile: try again
            if age < self.stale_after_s and not self._holder_is_gone():
                raise RmpeftError(f"run folder {self.path.parent} is in use by {self._holder()} (heartbeat {age:.0f} s "
                                  f"ago); a claim silent for {self.stale_after_s:.0f} s is taken over")
            stale = self.path.with_name(f"{LOCK_FILE}.stale-{self.token}")
            try:
                os.rename(self.path, stale)   # only one racing launch wins the stale claim
            except FileNotFoundError:
                continue
            stale.unlink(missing_ok=True)
        raise RmpeftError(f"could not claim run folder {self.path.parent}: other launches keep claiming it")

    def beat(self) -> None:
        """Refresh the heartbeat (the lock's modification time)."""
        if self.held:
            try:
                os.utime(self.path)
            except FileNotFoundError:
                pass

    def release(self) -> None:
        """Give the folder up, if the claim is still ours."""
        if not self.held:
            return
        self.held = False
        try:
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
