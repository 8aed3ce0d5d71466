"""User errors: which exceptions report a user's mistake, and the one line that describes each.

The ``lightembed`` command (:mod:`lightembed.cli`) and the pipeline's stage runner both turn a user error into one
line: the real cause out of jsonargparse's nested dumps, the model id a failed Hub look-up does not name.
"""

from __future__ import annotations

import argparse
import os
import re
from types import TracebackType

from lightembed.optional import MissingExtra

USER_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError, MissingExtra)
"""Exceptions that report a user's mistake (bad value, missing file or model, bad data, missing extra), besides
jsonargparse's parser errors; anything else is a bug and keeps its traceback."""

OPTIMIZER_HINT = (
    "the optimizer and its schedule are stage options: --model.init_args.optimizer torch.optim.SGD "
    "--model.init_args.optimizer.lr 0.1 --model.init_args.scheduler cosine (see `lightembed fit --model.help STAGE`)"
)


def is_parser_error(error: BaseException) -> bool:
    """An argument parser rejected an option (jsonargparse's errors, argparse's ``ArgumentError``)."""
    return type(error).__module__.startswith("jsonargparse") or isinstance(error, argparse.ArgumentError)


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` reports a user's mistake (one line, no traceback) rather than a bug."""
    return isinstance(error, USER_ERRORS) or is_parser_error(error)


def exit_status(error: BaseException) -> int:
    """2 for an option the parser rejected (argparse's convention), 1 for any other user error."""
    return 2 if is_parser_error(error) else 1


def _raised_inside(error: BaseException, package: str) -> bool:
    """Whether the innermost frame of ``error``'s traceback is code of ``package`` (e.g. jsonargparse)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename


def _root_cause(error: BaseException) -> BaseException:
    """The exception jsonargparse wrapped (its Union/class errors chain the original as ``__cause__``)."""
    while error.__cause__ is not None and (is_parser_error(error) or _raised_inside(error, "jsonargparse")):
        error = error.__cause__
    return error


def _hub_model_id(error: BaseException) -> str | None:
    """The Hub id transformers tried to fetch when ``error`` comes from a failed Hub look-up, else None.

    transformers' offline message ("couldn't connect to 'https://huggingface.co'") does not say which model; the id
    is the ``path_or_repo_id`` argument of its file resolver, found in the traceback's frames.
    """
    chain, cause = [], error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if not any(type(e).__module__.startswith("huggingface_hub") for e in chain):
        return None
    tb: TracebackType | None = error.__traceback__
    found = None
    while tb is not None:
        value = tb.tb_frame.f_locals.get("path_or_repo_id")
        found = value if isinstance(value, str) else found
        tb = tb.tb_next
    return found


def describe_user_error(error: BaseException) -> str:
    """One line for a user error: the real cause out of jsonargparse's dumps, the model id a Hub error lacks."""
    cause = _root_cause(error)
    text = str(cause).strip() or type(cause).__name__
    if "Does not validate against any of the Union subtypes" in text:  # a dump without a chained cause
        items = re.findall(r"^\s*- (.+)$", text, flags=re.MULTILINE)
        text = next((item for item in items if "Expected a <class 'NoneType'>" not in item), text)
    text = text.split("\nGiven value", 1)[0]
    line = " ".join(text.split())
    if isinstance(cause, KeyError):
        line = line.strip("'\"")
    if (model := _hub_model_id(cause)) is not None and model not in line:
        line = f"cannot load model {model!r} from the Hugging Face Hub: {line}"
    if re.search(r"(Unrecognized|unrecognized) arguments:.*--(optimizer|lr_scheduler)", line):
        line = f"{line}; {OPTIMIZER_HINT}"
    if isinstance(cause, FileNotFoundError) and cause.filename and str(cause.filename) not in line:
        line = f"{line}: {cause.filename}"
    return line
