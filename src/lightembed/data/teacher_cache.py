"""Teacher embeddings computed once and kept on disk, so epochs and reruns of a distillation never rerun the teacher.

A cache folder holds one subfolder per teacher **fingerprint** (:func:`teacher_fingerprint`: the sha256 of the
teacher's files — its weights, tokenizer and settings — and of the options it embeds with). In it, each file
``<hash>.safetensors`` is a shard of texts embedded together: ``digests (M, 16) uint8`` (the BLAKE2b-128 of each
text's exact UTF-8 bytes, :func:`text_digests`) and ``embeddings (M, T) float32``. A lookup reads the teacher's
shards, embeds only the texts no shard holds, and writes them as one new shard; so a changed text is the only one
embedded again, and a changed teacher (other weights or options) gets another folder.

Shards are written to a temporary file in the same folder and renamed into place (``os.replace``, atomic on POSIX):
a killed run leaves no half shard under a shard's name, only a ``*.tmp`` file that is never read (and is removed by
the next write once it is an hour old). A shard that fails to read (a disk error) is reported and ignored, its texts
embedded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from lightembed.backbones import resolve_model_path
from lightembed.provenance import bytes_sha256, file_sha256, package_versions

log = logging.getLogger(__name__)

DIGEST_BYTES = 16
SKIPPED_FILES = ("README.md",)  # a model card changes with each export's scores, not the embeddings
DESCRIPTION_FILE = "teacher.json"
STALE_SECONDS = 3600  # a temporary file this old belongs to a run that died


def default_cache_dir() -> Path:
    """``$LIGHTEMBED_CACHE/teacher``, else ``$XDG_CACHE_HOME/lightembed/teacher``, else ``~/.cache/lightembed/teacher``
    (the folder of lightembed's other caches)."""
    if os.environ.get("LIGHTEMBED_CACHE"):
        return Path(os.environ["LIGHTEMBED_CACHE"]).expanduser() / "teacher"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "lightembed" / "teacher"


def text_digests(texts: Sequence[str]) -> np.ndarray:
    """BLAKE2b-128 of each text's exact UTF-8 bytes (no normalisation: case and spaces change an embedding):
    ``(N, 16)`` uint8."""
    out = np.empty((len(texts), DIGEST_BYTES), dtype=np.uint8)
    for i, text in enumerate(texts):
        out[i] = np.frombuffer(hashlib.blake2b(text.encode("utf-8"), digest_size=DIGEST_BYTES).digest(), np.uint8)
    return out


def _content_hashes(teacher: str) -> dict[str, str]:
    """sha256 of every file the teacher is loaded from: a stage checkpoint, a model folder (recursively), or the
    Hugging Face cache's snapshot of a Hub id (downloaded first when the Hub is reachable, as loading would)."""
    path = Path(resolve_model_path(teacher))
    if not path.exists():  # a Hub id
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(teacher, local_files_only=True))
        except Exception:  # noqa: BLE001  (not cached: fetch it as loading it would; an unknown id fails here)
            try:
                path = Path(snapshot_download(teacher))
            except Exception as error:  # noqa: BLE001
                raise ValueError(
                    f"teacher {teacher!r} is not a local folder, checkpoint or packaged: model, and the Hugging Face "
                    f"Hub could not provide it ({type(error).__name__}); check the stage option `teacher`"
                ) from None
    if path.is_file():
        return {path.name: file_sha256(path)}
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.name not in SKIPPED_FILES)
    return {f.relative_to(path).as_posix(): file_sha256(f) for f in files}


def teacher_fingerprint(teacher: str, options: Mapping[str, Any]) -> str:
    """A 32-hex-digit key of what the teacher's embeddings depend on: its files' contents (not their path or
    time), the ``options`` it embeds with (normalisation, precision, ...) and lightembed's version."""
    payload = {
        "files": _content_hashes(teacher),
        "options": dict(options),
        "lightembed": package_versions(["lightembed"])["lightembed"],
    }
    return bytes_sha256(json.dumps(payload, sort_keys=True).encode("utf-8"))[:32]


class TeacherCache:
    """The cached embeddings of one teacher (one fingerprint) under ``folder``.

    Args:
        folder: the cache root; the teacher's shards go to ``folder/<fingerprint>/``.
        fingerprint: :func:`teacher_fingerprint` of the teacher and its options.
        description: written once to ``teacher.json`` beside the shards, so a person can tell the folders apart.

    Attributes:
        hits, misses: texts found in the cache and texts embedded by the last :meth:`embeddings` call.
    """

    def __init__(self, folder: str | Path, fingerprint: str, description: Mapping[str, Any] | None = None) -> None:
        self.folder = Path(folder).expanduser() / fingerprint
        self.description = dict(description or {})
        self.hits = 0
        self.misses = 0

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("*.safetensors")) if self.folder.is_dir() else []

    def _read(self) -> tuple[dict[bytes, tuple[int, int]], list[Tensor]]:
        """Digest -> (shard, row) over every readable shard, and each shard's embeddings."""
        index: dict[bytes, tuple[int, int]] = {}
        tables: list[Tensor] = []
        for path in self._shards():
            try:
                shard = load_file(path)
                digests, table = shard["digests"].numpy(), shard["embeddings"]
                if digests.shape != (table.shape[0], DIGEST_BYTES):
                    raise ValueError(f"digests {digests.shape} do not match embeddings {tuple(table.shape)}")
            except Exception as error:  # noqa: BLE001  (a damaged shard is recomputed, never trusted)
                log.warning("teacher cache: ignoring unreadable shard %s (%s)", path, error)
                continue
            for row, digest in enumerate(digests):
                index.setdefault(digest.tobytes(), (len(tables), row))
            tables.append(table)
        return index, tables

    def _write(self, digests: np.ndarray, table: Tensor) -> Path:
        """Write one shard atomically (temporary file in the same folder, then rename)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob("*.tmp"):  # left by a killed run and never read (a live writer's is younger)
            if time.time() - stale.stat().st_mtime > STALE_SECONDS:
                stale.unlink(missing_ok=True)
        description = self.folder / DESCRIPTION_FILE
        if self.description and not description.exists():
            self._atomic(description, lambda p: p.write_text(json.dumps(self.description, indent=2, default=str)))
        name = hashlib.sha256(np.ascontiguousarray(digests).tobytes()).hexdigest()[:32]
        target = self.folder / f"{name}.safetensors"
        tensors = {"digests": torch.from_numpy(np.ascontiguousarray(digests)), "embeddings": table.contiguous()}
        self._atomic(target, lambda p: save_file(tensors, str(p)))
        return target

    def _atomic(self, target: Path, write: Callable[[Path], Any]) -> None:
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{target.name}.", suffix=".tmp")
        os.close(handle)
        try:
            write(Path(temporary))
            os.replace(temporary, target)
        finally:
            Path(temporary).unlink(missing_ok=True)

    def embeddings(self, texts: Sequence[str], embed: Callable[[list[str]], Tensor]) -> Tensor:
        """The teacher's embeddings of ``texts``: ``(N, T)`` float32 in input order.

        Texts the cache holds are read; the others (each distinct text once) go to ``embed`` in one call, which
        returns ``(M, T)``, and are written as one new shard before this returns.
        """
        digests = text_digests(texts)  # (N, 16)
        keys = [d.tobytes() for d in digests]
        index, tables = self._read()
        missing: dict[bytes, int] = {}  # digest -> first position among texts
        for position, key in enumerate(keys):
            if key not in index and key not in missing:
                missing[key] = position
        self.misses, self.hits = len(missing), len(set(keys)) - len(missing)
        if missing:
            positions = list(missing.values())
            log.info("teacher cache: embedding %d new texts (%d cached) in %s", len(positions), self.hits, self.folder)
            fresh = embed([texts[p] for p in positions]).detach().float().cpu()  # (M, T)
            if fresh.dim() != 2 or fresh.shape[0] != len(positions):
                raise ValueError(f"the teacher returned {tuple(fresh.shape)} for {len(positions)} texts")
            if tables and tables[0].shape[1] != fresh.shape[1]:
                raise ValueError(
                    f"the teacher now embeds in {fresh.shape[1]} dims but its cache in {self.folder} holds "
                    f"{tables[0].shape[1]}: remove that folder"
                )
            self._write(digests[positions], fresh)
            for row, key in enumerate(missing):
                index[key] = (len(tables), row)
            tables.append(fresh)
        if not keys:
            return torch.empty(0, tables[0].shape[1] if tables else 0)
        located = torch.tensor([index[key] for key in keys])  # (N, 2): shard, row
        out = torch.empty(len(keys), tables[0].shape[1])  # (N, T)
        for shard, table in enumerate(tables):
            here = (located[:, 0] == shard).nonzero().flatten()  # positions read from this shard
            out[here] = table[located[here, 1]].float()
        return out
