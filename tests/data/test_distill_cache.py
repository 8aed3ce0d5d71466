"""The teacher cache: each distinct text embedded once per teacher, ever; a changed text or teacher is embedded
again; shards are written atomically and a damaged one is recomputed, never trusted."""

import shutil

import pytest
import torch

from lightembed.data import teacher_cache
from lightembed.data.teacher_cache import TeacherCache, teacher_fingerprint, text_digests

T = 4


class CountingTeacher:
    """A stand-in teacher: a deterministic embedding per text; records every text it is asked to embed."""

    def __init__(self, offset: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.offset = offset

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return torch.tensor([[len(t) + self.offset, t.count("a"), t.count(" "), ord(t[0])] for t in texts]).float()


TEXTS = ["a cat", "a dog sleeps", "the sun", "a cat", "rain again"]


def test_each_distinct_text_is_embedded_once_then_read(tmp_path):
    teacher = CountingTeacher()
    first = TeacherCache(tmp_path, "fp").embeddings(TEXTS, teacher)
    assert teacher.calls == [["a cat", "a dog sleeps", "the sun", "rain again"]]  # the duplicate once
    torch.testing.assert_close(first, teacher(TEXTS))
    teacher.calls.clear()
    cache = TeacherCache(tmp_path, "fp")  # a rerun (or the next epoch)
    again = cache.embeddings(list(reversed(TEXTS)), teacher)
    assert teacher.calls == [] and cache.misses == 0 and cache.hits == 4
    torch.testing.assert_close(again, first.flip(0))


def test_a_changed_text_alone_is_embedded_again(tmp_path):
    teacher = CountingTeacher()
    TeacherCache(tmp_path, "fp").embeddings(TEXTS, teacher)
    changed = [*TEXTS[:2], "the moon", *TEXTS[3:]]
    got = TeacherCache(tmp_path, "fp").embeddings(changed, teacher)
    assert teacher.calls[1:] == [["the moon"]]
    torch.testing.assert_close(got, CountingTeacher()(changed))
    assert len(list((tmp_path / "fp").glob("*.safetensors"))) == 2  # one shard per batch of new texts


def test_another_teacher_is_embedded_again(tmp_path):
    TeacherCache(tmp_path, "fp-a").embeddings(TEXTS, CountingTeacher())
    other = CountingTeacher(offset=100.0)
    got = TeacherCache(tmp_path, "fp-b").embeddings(TEXTS, other)
    assert len(other.calls) == 1
    assert got[0, 0].item() == 105.0


def test_a_killed_write_leaves_nothing_that_is_read(tmp_path, monkeypatch):
    def dies_half_way(tensors, path):
        with open(path, "wb") as handle:
            handle.write(b"\x00" * 10)  # a few bytes, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(teacher_cache, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        TeacherCache(tmp_path, "fp").embeddings(TEXTS, CountingTeacher())
    assert list((tmp_path / "fp").glob("*.safetensors")) == []
    monkeypatch.undo()
    teacher = CountingTeacher()
    TeacherCache(tmp_path, "fp").embeddings(TEXTS, teacher)
    assert len(teacher.calls) == 1  # nothing half-written was taken for a cached embedding


def test_a_damaged_shard_is_ignored_and_recomputed(tmp_path, caplog):
    TeacherCache(tmp_path, "fp").embeddings(TEXTS, CountingTeacher())
    [shard] = (tmp_path / "fp").glob("*.safetensors")
    shard.write_bytes(shard.read_bytes()[:40])  # truncated on disk
    teacher = CountingTeacher()
    got = TeacherCache(tmp_path, "fp").embeddings(TEXTS, teacher)
    assert len(teacher.calls) == 1 and "unreadable shard" in caplog.text
    torch.testing.assert_close(got, CountingTeacher()(TEXTS))


def test_text_digests_are_exact():
    digests = text_digests(["A cat", "a cat", "a  cat", "a cat"])
    assert digests.shape == (4, 16)
    assert len({d.tobytes() for d in digests}) == 3  # case and spacing change an embedding: no normalisation


def test_fingerprint_follows_content_and_options_not_the_path(tiny_bert_dir, tmp_path):
    copy = shutil.copytree(tiny_bert_dir, tmp_path / "copy")
    base = teacher_fingerprint(str(tiny_bert_dir), {"normalize": None})
    assert teacher_fingerprint(str(copy), {"normalize": None}) == base
    assert teacher_fingerprint(str(copy), {"normalize": True}) != base
    (copy / "README.md").write_text("a model card with new scores")  # not part of the embeddings
    assert teacher_fingerprint(str(copy), {"normalize": None}) == base
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    assert teacher_fingerprint(str(copy), {"normalize": None}) != base


def test_fingerprint_of_a_missing_local_teacher_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        teacher_fingerprint(str(tmp_path / "nowhere"), {})
