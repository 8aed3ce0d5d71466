"""DistillationModule through ``lightembed fit``: MSE on sentences (with a projection when sizes differ) and MarginMSE
on NLI triplets, on tiny random models; the teacher runs once per text across runs; a bad teacher is one line."""

import json
from pathlib import Path

# Lightning's log handler keeps the sys.stderr of its import: import it before a test's captured stderr
import lightning.pytorch  # noqa: F401
import pytest
import torch
from transformers import BertConfig, BertModel

from lightembed.cli import main, run_command
from lightembed.encoder import Encoder
from lightembed.stages import distill as distill_stage

ROOT = Path(__file__).resolve().parents[2]
SENTENCES = [f"Sentence {i} is about topic {i % 5} and a day of the week number {i % 7}." for i in range(24)]


@pytest.fixture(scope="module")
def narrow_bert_dir(tmp_path_factory, tokenizer) -> Path:
    """A random 2-layer BERT of hidden 16: a student narrower than the tiny teacher (hidden 32)."""
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
    )
    folder = tmp_path_factory.mktemp("narrow-bert")
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def sentences_file(tmp_path) -> Path:
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


@pytest.fixture
def teacher_calls(monkeypatch) -> list[int]:
    """How many texts the stage asked the teacher to embed, per load."""
    calls: list[int] = []
    original = distill_stage.DistillationModule._embed_with_teacher

    def counted(self, texts):
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(distill_stage.DistillationModule, "_embed_with_teacher", counted)
    return calls


def write_config(tmp_path: Path, student: Path, teacher: Path, train: Path, **model: object) -> Path:
    """A small stage config as a user would write it: tiny models, a local file, 2 steps, export at the end."""
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "default_root_dir": str(tmp_path / "run"),  # LightningCLI saves config.yaml there, not in the cwd
            "precision": "32-true",
            "max_steps": 2,
            "limit_val_batches": 0,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "callbacks": [
                {"class_path": "lightembed.callbacks.ExportCallback", "init_args": {"folder": str(tmp_path / "out")}}
            ],
        },
        "model": {
            "class_path": "lightembed.stages.DistillationModule",
            "init_args": {
                "encoder": {"backbone": str(student), "max_length": 32, "layers": 1},
                "teacher": str(teacher),
                "cache_dir": str(tmp_path / "teacher-cache"),
                **model,
            },
        },
        "data": {
            "class_path": "lightembed.data.distill.DistillationDataModule",
            "init_args": {"train": str(train), "batch_size": 4},
        },
    }
    path = tmp_path / "distill.json"  # JSON is YAML
    path.write_text(json.dumps(config))
    return path


def test_mse_fit_caches_the_teacher_and_exports_the_student_alone(
    tiny_bert_dir, narrow_bert_dir, sentences_file, teacher_calls, tmp_path
):
    config = write_config(tmp_path, narrow_bert_dir, tiny_bert_dir, sentences_file)
    cli = run_command(["fit", "--config", str(config)])
    assert cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert teacher_calls == [len(SENTENCES)]
    projection = cli.model.loss.projection  # student 16 -> teacher 32, trained with the student
    assert projection is not None and tuple(projection.weight.shape) == (32, 16)
    [optimizer] = cli.trainer.optimizers
    assert projection.weight in optimizer.state, "the projection received no optimizer step"
    exported = Encoder.from_pretrained(str(tmp_path / "out"))
    assert exported.embedding_dim == 16 and len(exported.backbone.encoder.layer) == 1
    assert not any("projection" in name for name in exported.state_dict())
    # a rerun (new process state, same cache) never runs the teacher
    run_command(["fit", "--config", str(config)])
    assert teacher_calls == [len(SENTENCES)]
    # a changed text is the only one embedded again
    sentences_file.write_text("\n".join(["A brand new sentence.", *SENTENCES[1:]]) + "\n")
    run_command(["fit", "--config", str(config)])
    assert teacher_calls == [len(SENTENCES), 1]


def test_margin_mse_fit_on_nli_triplets(tiny_bert_dir, fixtures_dir, tmp_path):
    config = write_config(tmp_path, tiny_bert_dir, tiny_bert_dir, fixtures_dir / "nli_tiny.jsonl", loss="margin_mse")
    args = ["fit", "--config", str(config), "--data.init_args.train_format", "nli_triplets"]
    cli = run_command(args)
    assert cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_margin_mse_refuses_sentences(tiny_bert_dir, sentences_file, tmp_path, capsys):
    config = write_config(tmp_path, tiny_bert_dir, tiny_bert_dir, sentences_file, loss="margin_mse")
    status = main(["fit", "--config", str(config)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status != 0 and "triplets" in err[-1] and "Traceback" not in "\n".join(err)


@pytest.mark.parametrize("where", ["folder", "hub"])
def test_a_bad_teacher_is_one_line_naming_it(where, tiny_bert_dir, sentences_file, tmp_path, capsys):
    teacher = tmp_path / "no-such-teacher" if where == "folder" else "no-such-org/no-such-teacher"
    config = write_config(tmp_path, tiny_bert_dir, teacher, sentences_file)
    status = main(["fit", "--config", str(config)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status != 0 and "Traceback" not in err
    assert lines[-1].startswith("lightembed fit: error: ") and "no-such-teacher" in lines[-1], err
    assert sum("error" in line.lower() for line in lines) == 1, err
