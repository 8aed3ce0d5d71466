"""``<output_dir>/pipeline.lock``: one pipeline run per output folder (two would overwrite each other's manifest)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from lightembed.pipeline.manifest import now
from lightembed.pipeline.spec import PipelineError

LOCK_FILE = "pipeline.lock"
"""Locked (``flock``) by the run using an output folder, with its pid and host inside; a second run is refused."""


@contextlib.contextmanager
def output_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<folder>/pipeline.lock`` while a run uses the folder.

    The kernel releases the lock when its holder exits, however it exits (``kill -9`` included), so there is no
    stale lock to take over and no window in which two takers both win. The file itself only says who holds it
    (pid, host, time) for the refusal message. A lock held by a live process raises :class:`PipelineError`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PipelineError(
                f"output folder {folder} is in use by another pipeline run ({_holder(lock)}); wait for it to "
                "finish or use another --output"
            ) from None
        # the previous holder unlinks the file before releasing it: a lock taken on that unlinked file guards
        # nothing (a third process may already hold a new file under the name), so take the current file instead
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()}).encode())
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still locked: see the inode check above
        os.close(fd)  # releases the flock


def _holder(lock: Path) -> str:
    try:
        return lock.read_text().strip() or "holder unknown"
    except OSError:
        return "holder unknown"
