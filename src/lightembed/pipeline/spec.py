"""The pipeline file: its schema, checked once with errors that name the file and the key.

See :mod:`lightembed.pipeline` for the file format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightembed.fit import ADAPTER_INIT_OPTION, BACKBONE_OPTION

_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PIPELINE_KEYS = {"name", "output_dir", "model", "seed", "stages", "arms", "evaluate"}
_STAGE_KEYS = {"name", "configs", "args", "init_adapter_from_previous"}
_EVALUATE_KEYS = {"sts", "data_root", "split", "batch_size", "instruction"}
PINNED = (
    f"--{BACKBONE_OPTION}",
    "--trainer.default_root_dir",
    "--trainer.logger.init_args.save_dir",
    "--trainer.logger.init_args.name",
    "--trainer.logger.init_args.version",
    "--ckpt_path",
)
"""Stage arguments the pipeline sets itself (a stage's ``args`` may not)."""
ARMS_DIR = "arms"
"""Sub-folder of the output folder holding one linear run folder per arm (``arms/<arm>/``)."""
INIT_FROM = f"--{ADAPTER_INIT_OPTION}"
"""Set to ``<previous export>/adapter`` for a stage with ``init_adapter_from_previous``."""


@dataclass(frozen=True)
class StageSpec:
    """One stage: LightningCLI ``--config`` files (resolved, absolute) and extra arguments."""

    name: str
    configs: tuple[Path, ...]
    args: tuple[str, ...] = ()
    init_adapter_from_previous: bool = False


@dataclass(frozen=True)
class EvaluateSpec:
    """STS evaluation of the final model: ``[NAME=]SOURCE`` strings as for ``lightembed evaluate --sts``."""

    sts: tuple[str, ...]
    data_root: str | None = None
    split: str = "test"
    batch_size: int = 64
    instruction: str | None = None


@dataclass(frozen=True)
class ArmSpec:
    """One arm of an ablation: a chain of stage names from the pool, run in order from the pipeline's ``model``."""

    name: str
    stages: tuple[str, ...]


@dataclass(frozen=True)
class PipelineSpec:
    """A parsed pipeline file (see the module docstring). With ``arms``, ``stages`` is the pool the arms draw from."""

    name: str
    model: str
    stages: tuple[StageSpec, ...]
    output_dir: Path
    seed: int | None = None
    evaluate: EvaluateSpec | None = None
    source: Path | None = None
    arms: tuple[ArmSpec, ...] = ()


class PipelineError(ValueError):
    """A pipeline file or run folder that cannot be used as it is; the message names the file, stage or path."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (plain YAML keeps the last one silently: a
    repeated arm or stage option would vanish)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_keys(mapping: Any, allowed: set[str], required: set[str], where: str) -> dict:
    if not isinstance(mapping, dict):
        raise PipelineError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise PipelineError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(required - set(mapping))
    if missing:
        raise PipelineError(f"{where}: missing required key(s) {missing}")
    return mapping


def _typed(value: Any, kind: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise PipelineError(f"{where}: expected {names}, got {value!r}")
    return value


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    _typed(value, list, where)
    return tuple(_typed(item, str, f"{where}[{i}]") for i, item in enumerate(value))


def repo_root(start: Path) -> Path | None:
    """The nearest ancestor of ``start`` (included) holding ``pyproject.toml`` or ``.git``, else None."""
    for folder in [start, *start.parents]:
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            return folder
    return None


def _resolve_config(entry: str, pipeline_dir: Path, where: str) -> Path:
    path = Path(entry).expanduser()
    if path.is_absolute():
        tried = [path]
    else:
        root = repo_root(pipeline_dir)
        tried = list(dict.fromkeys([pipeline_dir / path, *([root / path] if root else [])]))
    for candidate in tried:
        if candidate.is_file():
            return candidate.resolve()
    raise PipelineError(f"{where}: config file {entry!r} not found; tried {[str(p) for p in tried]}")


def _parse_stage(raw: Any, index: int, pipeline_dir: Path, seed_pinned: bool, where: str, pool: bool) -> StageSpec:
    where = f"{where}: stages[{index}]"
    raw = _check_keys(raw, _STAGE_KEYS, {"name", "configs"}, where)
    name = _typed(raw["name"], str, f"{where}.name")
    if not _STAGE_NAME.match(name):
        raise PipelineError(f"{where}.name: {name!r} is not a folder name (letters, digits, '.', '_', '-')")
    where = f"{where} ({name!r})"
    configs = _str_list(raw["configs"], f"{where}.configs")
    if not configs:
        raise PipelineError(f"{where}.configs: give at least one LightningCLI config file")
    args = _str_list(raw.get("args") or [], f"{where}.args")
    init_adapter = _typed(raw.get("init_adapter_from_previous", False), bool, f"{where}.init_adapter_from_previous")
    if init_adapter and index == 0 and not pool:  # an arm's first stage is checked with the arms
        raise PipelineError(f"{where}: init_adapter_from_previous is set but the first stage has no previous stage")
    pinned = PINNED + (("--seed_everything",) if seed_pinned else ()) + ((INIT_FROM,) if init_adapter else ())
    for arg in args:
        if arg.split("=", 1)[0] in pinned:
            raise PipelineError(f"{where}.args: {arg!r} is set by the pipeline; remove it (pinned: {list(pinned)})")
    resolved = tuple(_resolve_config(c, pipeline_dir, f"{where}.configs[{i}]") for i, c in enumerate(configs))
    return StageSpec(name, resolved, args, init_adapter)


def load_pipeline(path: str | Path, output_dir: str | Path | None = None) -> PipelineSpec:
    """Parse and check a pipeline file; ``output_dir`` overrides the file's (both relative to the working dir)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pipeline file {str(path)!r} does not exist")
    where = str(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise PipelineError(f"{where}: not valid YAML: {err}") from err
    raw = _check_keys(raw, _PIPELINE_KEYS, {"name", "model", "stages"}, where)
    name = _typed(raw["name"], str, f"{where}: name")
    if not _STAGE_NAME.match(name):
        raise PipelineError(f"{where}: name {name!r} is not a folder name (letters, digits, '.', '_', '-')")
    model = _typed(raw["model"], str, f"{where}: model")
    seed = _typed(raw.get("seed"), int, f"{where}: seed", optional=True)
    stages_raw = _typed(raw["stages"], list, f"{where}: stages")
    if not stages_raw:
        raise PipelineError(f"{where}: stages is empty")
    pipeline_dir = path.resolve().parent
    pool = raw.get("arms") is not None
    stages = tuple(_parse_stage(s, i, pipeline_dir, seed is not None, where, pool) for i, s in enumerate(stages_raw))
    names = [s.name for s in stages]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PipelineError(f"{where}: stage names must be unique; repeated: {duplicates}")
    arms = _parse_arms(raw["arms"], {s.name: s for s in stages}, where) if pool else ()
    evaluate = None
    if raw.get("evaluate") is not None:
        ev = _check_keys(raw["evaluate"], _EVALUATE_KEYS, {"sts"}, f"{where}: evaluate")
        sts = _str_list(ev["sts"], f"{where}: evaluate.sts")
        if not sts:
            raise PipelineError(f"{where}: evaluate.sts is empty")
        evaluate = EvaluateSpec(
            sts=sts,
            data_root=_typed(ev.get("data_root"), str, f"{where}: evaluate.data_root", optional=True),
            split=_typed(ev.get("split", "test"), str, f"{where}: evaluate.split"),
            batch_size=_typed(ev.get("batch_size", 64), int, f"{where}: evaluate.batch_size"),
            instruction=_typed(ev.get("instruction"), str, f"{where}: evaluate.instruction", optional=True),
        )
    out = output_dir or _typed(raw.get("output_dir"), str, f"{where}: output_dir", optional=True)
    out = Path(out or Path("checkpoints") / name).expanduser().resolve()
    return PipelineSpec(name, model, stages, out, seed, evaluate, path.resolve(), arms)


def _parse_arms(raw: Any, pool: dict[str, StageSpec], where: str) -> tuple[ArmSpec, ...]:
    """``arms: {arm: [stage, ...]}``: each arm a chain of distinct pool stages; every pool stage in some arm."""
    where = f"{where}: arms"
    _typed(raw, dict, where)
    if not raw:
        raise PipelineError(f"{where}: is empty; give at least one arm (arm name: [stage, ...]) or remove the key")
    arms = []
    for name, chain in raw.items():
        if not isinstance(name, str) or not _STAGE_NAME.match(name):
            raise PipelineError(f"{where}: arm name {name!r} is not a folder name (letters, digits, '.', '_', '-')")
        chain = _str_list(chain, f"{where}.{name}") if chain is not None else ()
        if not chain:
            raise PipelineError(f"{where}.{name}: is empty; list the stages the arm runs, in order")
        unknown = [s for s in chain if s not in pool]
        if unknown:
            raise PipelineError(f"{where}.{name}: unknown stage(s) {unknown}; the stages are {sorted(pool)}")
        repeated = sorted({s for s in chain if chain.count(s) > 1})
        if repeated:
            raise PipelineError(f"{where}.{name}: stage(s) {repeated} appear twice; an arm runs each stage once")
        if pool[chain[0]].init_adapter_from_previous:
            raise PipelineError(
                f"{where}.{name}: its first stage {chain[0]!r} sets init_adapter_from_previous but has no previous "
                "stage in this arm"
            )
        same = [arm.name for arm in arms if arm.stages == chain]
        if same:
            raise PipelineError(f"{where}.{name}: runs the same stages as arm {same[0]!r}; remove one of them")
        arms.append(ArmSpec(name, chain))
    unused = sorted(set(pool) - {s for arm in arms for s in arm.stages})
    if unused:
        raise PipelineError(f"{where}: stage(s) {unused} are in no arm; add them to an arm or remove them")
    return tuple(arms)


def arm_pipeline(spec: PipelineSpec, arm: ArmSpec) -> PipelineSpec:
    """The linear pipeline one arm runs: its stages from the pool, in ``<output_dir>/arms/<arm>``, no evaluation."""
    pool = {s.name: s for s in spec.stages}
    stages = tuple(pool[name] for name in arm.stages)
    out = spec.output_dir / ARMS_DIR / arm.name
    return PipelineSpec(f"{spec.name}.{arm.name}", spec.model, stages, out, spec.seed, None, spec.source)
