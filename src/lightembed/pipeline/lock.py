"""``<output_dir>/pipeline.lock``: one pipeline run per output folder (two would overwrite each other's manifest)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightembed.pipeline.manifest import now
from lightembed.pipeline.spec import PipelineError

LOCK_FILE = "pipeline.lock"
"""Held (pid and host inside) by the run using an output folder; a second run on the same folder is refused."""


@contextlib.contextmanager
def output_lock(folder: Path) -> Iterator[None]:
    """Hold ``<folder>/pipeline.lock`` while a run uses the folder: two runs would overwrite each other's manifest.

    A lock left by a process that is gone (``kill -9``) is taken over; one held by a live process, or by another
    host (which cannot be checked), raises :class:`PipelineError`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):  # being written, or left empty by a crash
                holder = None
            if holder is None or holder.get("host") != me["host"] or _pid_alive(holder.get("pid")):
                raise PipelineError(
                    f"output folder {folder} is in use by another pipeline run ({holder}); wait for it, use another "
                    f"--output, or delete {lock} if that run is gone"
                ) from None
            lock.unlink(missing_ok=True)  # its process is gone: take the folder over
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        break
    else:
        raise PipelineError(f"could not take the lock {lock}")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # unreadable: do not take over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
