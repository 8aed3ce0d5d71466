"""One pipeline run per output folder, with real processes racing for it (issue 18, item 6).

The old lock (``O_CREAT|O_EXCL`` plus a takeover of a dead pid's file) let two processes hold the folder after a
stale-lock takeover: both read the dead pid, both removed the file and both created it. ``fcntl.flock`` has no
takeover: the kernel drops the lock of a process that dies.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lightembed.pipeline import LOCK_FILE, PipelineError, output_lock

ROUNDS = 300


def _worker(lock: Callable, out: Path, barrier, overlaps, acquired) -> None:  # noqa: ANN001 (multiprocessing types)
    inside = out / "inside"
    for _ in range(ROUNDS):
        barrier.wait()
        try:
            with lock(out):
                with acquired.get_lock():
                    acquired.value += 1
                try:
                    fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:  # the other process is inside too
                    with overlaps.get_lock():
                        overlaps.value += 1
                else:
                    os.close(fd)
                    time.sleep(0.001)
                    os.unlink(inside)
        except PipelineError:
            pass
        barrier.wait()


def race(lock: Callable, out: Path) -> tuple[int, int]:
    """Two forked processes race for ``lock(out)`` in every round, starting from a lock file left by a dead
    process; returns (rounds in which both were inside at once, acquisitions)."""
    out.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}"}}'
    ctx = multiprocessing.get_context("fork")
    barrier, overlaps, acquired = ctx.Barrier(3), ctx.Value("i", 0), ctx.Value("i", 0)
    workers = [ctx.Process(target=_worker, args=(lock, out, barrier, overlaps, acquired)) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(ROUNDS):
            (out / LOCK_FILE).write_text(stale)  # what a kill -9 left
            barrier.wait(timeout=30)
            barrier.wait(timeout=30)
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert all(w.exitcode == 0 for w in workers)
    return overlaps.value, acquired.value


def test_two_processes_racing_for_a_stale_lock_never_both_hold_it(tmp_path):
    overlaps, acquired = race(output_lock, tmp_path / "out")
    assert overlaps == 0
    assert acquired >= ROUNDS  # every round someone got the folder


def test_a_killed_holder_releases_the_folder_and_a_live_one_is_named(tmp_path):
    out = tmp_path / "out"
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()

    def hold() -> None:
        with output_lock(out):
            ready.set()
            time.sleep(60)

    holder = ctx.Process(target=hold)
    holder.start()
    try:
        assert ready.wait(timeout=30)
        with pytest.raises(PipelineError, match=rf"in use by another pipeline run \(.*\"pid\": {holder.pid}"):
            with output_lock(out):
                pass
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup runs: the lock file stays, the kernel drops the flock
        holder.join(timeout=30)
    finally:
        if holder.is_alive():
            holder.kill()
    assert (out / LOCK_FILE).exists()
    with output_lock(out):
        assert f'"pid": {os.getpid()}' in (out / LOCK_FILE).read_text()
    assert not (out / LOCK_FILE).exists()
