"""SIGTERM and SIGINT end a run with the conventional exit status (128 + signal: 143, 130) after a clean stop.

Lightning already stops ``fit`` gracefully on SIGTERM: its signal connector sets ``trainer.received_sigterm`` and the
loops raise :class:`~lightning.pytorch.utilities.exceptions.SIGTERMException` at the next batch boundary, where the
callbacks' ``on_exception`` hooks can save a checkpoint. But that exception is a ``SystemExit`` without a code, so
the process exits with status 0, and a scheduler (SLURM, Kubernetes) records a preempted job as a success. Ctrl-C
raises ``KeyboardInterrupt`` wherever the main thread happens to be (mid optimizer step) and Lightning exits with 1.

:func:`handle_interrupts` fixes both without replacing Lightning's handling:

* While a trainer runs, Lightning's SIGTERM handler is installed and calls the handler installed before it (ours),
  which only records the signal. A first SIGINT is routed to Lightning's SIGTERM handler, so Ctrl-C also stops at
  a batch boundary with a checkpoint; a second SIGINT raises ``KeyboardInterrupt`` at once.
* Outside a trainer (loading a model, between pipeline stages) a signal raises :class:`Interrupted` at once.
* Leaving the block, any interrupt (Lightning's exception, its ``sys.exit(1)`` after a ``KeyboardInterrupt``, or a
  signal that arrived during the last batch, after which Lightning lets the run finish) becomes
  :class:`Interrupted`, a ``SystemExit`` whose code is ``128 + signal``.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException

_received: list[int] = []  # signals received inside the outermost handle_interrupts block, in order
_depth = 0


class Interrupted(SystemExit):
    """The run was stopped by a signal; the process exits with ``128 + signum`` (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}"


def received() -> int | None:
    """The first signal received inside the current :func:`handle_interrupts` block, or None."""
    return _received[0] if _received else None


def interrupt_signal(error: BaseException) -> int | None:
    """The signal behind ``error`` when it is an interrupt (ours, Lightning's, or Ctrl-C's), else None."""
    if isinstance(error, Interrupted):
        return error.signum
    if isinstance(error, SIGTERMException):
        return received() or signal.SIGTERM
    if isinstance(error, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(error, SystemExit) and isinstance(error.__context__, KeyboardInterrupt):  # Lightning's exit(1)
        return signal.SIGINT
    return None


def _ours_installed() -> bool:
    return signal.getsignal(signal.SIGTERM) is _on_signal


def _on_signal(signum: int, frame: FrameType | None) -> None:
    first = not _received
    _received.append(signum)
    if _ours_installed():  # no trainer is running: stop here
        raise Interrupted(_received[0])
    if signum == signal.SIGINT:
        if not first:  # a second Ctrl-C: stop now, without waiting for the batch to end
            raise KeyboardInterrupt
        lightning = signal.getsignal(signal.SIGTERM)
        if callable(lightning):
            lightning(signal.SIGTERM, frame)  # Lightning stops at the next batch boundary
    # a SIGTERM reaching us here was forwarded by Lightning's handler, which already set received_sigterm


@contextlib.contextmanager
def handle_interrupts(what: str) -> Iterator[None]:
    """Route SIGTERM/SIGINT to a clean stop, and exit with ``128 + signal`` (see the module docstring).

    Nested blocks share the outermost one's handlers (the pipeline runs ``fit`` inside its own block); the outermost
    prints one line on stderr naming ``what`` was interrupted. Outside the main thread it does nothing (Python
    allows signal handlers only there).
    """
    global _depth
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    if _depth == 0:
        _received.clear()
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _on_signal)
    _depth += 1
    interrupted: Interrupted | None = None
    try:
        yield
    except BaseException as error:
        signum = interrupt_signal(error)
        if signum is None:
            raise
        interrupted = error if isinstance(error, Interrupted) else Interrupted(signum)
        if interrupted is not error:
            interrupted.__cause__ = error
    finally:
        _depth -= 1
        if _depth == 0:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if interrupted is None and _received and _depth == 0:
        interrupted = Interrupted(_received[0])  # arrived while Lightning let the last batch finish: honour it
    if interrupted is not None:
        if _depth == 0:
            print(f"lightembed {what}: {interrupted} (exit status {interrupted.code})", file=sys.stderr, flush=True)
        raise interrupted
