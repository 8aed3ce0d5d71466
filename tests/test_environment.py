"""environment.yml and pyproject.toml pin the same packages at the same versions."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_pins() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        pins |= set(extra)
    return pins


def _environment_pins() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {line for line in pip_section if not line.startswith("-e")}


def test_environment_matches_pyproject():
    assert _environment_pins() == _pyproject_pins()


def test_every_dependency_is_pinned():
    assert all("==" in pin for pin in _pyproject_pins())


def test_environment_python_matches_requires_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]


def test_no_deps_packages_are_named_in_environment_yml():
    no_deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["lightembed"]["no-deps"]
    comment = next(line for line in (ROOT / "environment.yml").read_text().splitlines() if "no-deps:" in line)
    assert comment.split("--no-deps", 1)[1].split() == no_deps
