"""Wall time of ``lightembed --help``: median of N fresh processes, before and after a change, side by side.

"Before" runs another checkout's sources (e.g. ``git worktree add /tmp/cli-before <commit>``) with this venv:
``PYTHONPATH=/tmp/cli-before/src python -m lightembed --help``; "after" runs this checkout's the same way. The runs
alternate (before, after, before, ...) so both see the same machine load. Run it alone (no other heavy job):

    flock /tmp/lightembed-heavy.lock .venv/bin/python benchmarks/cli_startup.py --before-src /tmp/cli-before/src \
        --before-commit <commit>
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def time_help(src: Path) -> tuple[float, str]:
    """Seconds one fresh ``python -m lightembed --help`` takes with ``src`` first on the path, and its stderr."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lightembed", "--help"], capture_output=True, text=True, env=env, cwd=ROOT, check=True
    )
    return time.perf_counter() - start, done.stderr


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd, check=True).stdout.strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-src", type=Path, required=True, help="src/ folder of the earlier checkout")
    parser.add_argument("--before-commit", default=None, help="its commit (default: read from its git worktree)")
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per version (default 5)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/cli.json")
    ns = parser.parse_args()
    before_commit = ns.before_commit or git("rev-parse", "HEAD", cwd=ns.before_src)
    time_help(ns.before_src), time_help(ROOT / "src")  # warm the file cache once for both, not counted
    times: dict[str, list[float]] = {"before": [], "after": []}
    after_stderr = ""
    for _ in range(ns.runs):
        times["before"].append(time_help(ns.before_src)[0])
        seconds, after_stderr = time_help(ROOT / "src")
        times["after"].append(seconds)
    import torch

    result = {
        "help_seconds": {name: round(statistics.median(values), 3) for name, values in times.items()},
        "runs_seconds": {name: [round(v, 3) for v in values] for name, values in times.items()},
        "after_stderr_lines": len(after_stderr.splitlines()),
        "command": "python -m lightembed --help (fresh process each run, median)",
        "env": {
            "before_commit": before_commit,
            "after_commit": git("rev-parse", "HEAD"),
            "after_has_uncommitted_changes": bool(git("status", "--porcelain", "--", "src")),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
    }
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["help_seconds"]))


if __name__ == "__main__":
    main()
