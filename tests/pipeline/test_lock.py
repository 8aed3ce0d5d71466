"""One pipeline run per output folder; the lock of a process that is gone is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from lightembed.pipeline import LOCK_FILE, PipelineError, output_lock


def test_a_second_run_on_the_same_output_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        with pytest.raises(PipelineError, match="in use by another pipeline run"):
            with output_lock(out):
                pass
    assert not (out / LOCK_FILE).exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname()}))
    with output_lock(out):  # the lock of a process that is gone (kill -9) is taken over
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
