"""``lightembed predict`` writes the embeddings of a text file, in source order, equal to ``Encoder.encode``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lightembed.data import TextDataModule
from lightembed.data.batches import evaluation_sets
from lightembed.encoder import Encoder, EncoderSettings
from lightembed.fit import build_cli

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "A man is playing a guitar.",
    "Short.",
    "Someone plays music on stage tonight, and the crowd sings along with every word.",
    "The cat sleeps.",
    "Stocks fell sharply after the announcement.",
]


@pytest.fixture
def texts_file(tmp_path) -> Path:
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"doc_id": f"d{i}", "body": t}) + "\n" for i, t in enumerate(TEXTS)))
    return path


def predict(model_dir: Path, texts_file: Path, out: Path, *extra: str) -> None:
    configs = ["configs/trainer/cpu.yaml", "configs/model/angle_minilm.yaml", "configs/data/predict_texts.yaml"]
    options = {
        "model.init_args.encoder.backbone": str(model_dir),
        "model.init_args.encoder.max_length": "32",
        "model.init_args.encoder.normalize": "true",
        "data.init_args.source": str(texts_file),
        "data.init_args.text_column": "body",
        "data.init_args.id_column": "doc_id",
        "data.init_args.batch_size": "2",
        "trainer.precision": "32-true",
        "trainer.logger.init_args.save_dir": str(out),
        "trainer.enable_progress_bar": "false",
    }
    args = [arg for config in configs for arg in ("--config", str(ROOT / config))]
    build_cli(["predict", *args, *(arg for key, value in options.items() for arg in (f"--{key}", value)), *extra])


def test_predict_writes_the_embeddings_encode_gives_in_source_order(tiny_bert_dir, texts_file, tmp_path):
    predict(tiny_bert_dir, texts_file, tmp_path / "runs")
    folder = tmp_path / "runs" / "lightembed" / "version_0" / "predictions"
    embeddings = np.load(folder / "embeddings.npy")
    rows = pq.read_table(folder / "rows.parquet").to_pydict()
    assert rows == {"row": list(range(len(TEXTS))), "id": [f"d{i}" for i in range(len(TEXTS))], "text": TEXTS}
    encoder = Encoder(EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, normalize=True)).eval()
    torch.testing.assert_close(torch.from_numpy(embeddings), encoder.encode(TEXTS), atol=1e-5, rtol=1e-5)


def test_predict_parquet_output_has_an_embedding_column(tiny_bert_dir, texts_file, tmp_path):
    out = tmp_path / "preds"
    writer = json.dumps({"class_path": "lightembed.callbacks.PredictionWriter", "init_args": {"format": "parquet"}})
    callbacks = f"[{writer}]"
    instruction = "Represent the sentence: "
    predict(
        tiny_bert_dir,
        texts_file,
        tmp_path / "runs",
        "--trainer.callbacks",
        callbacks.replace('"format": "parquet"', f'"format": "parquet", "output_dir": "{out}"'),
        "--data.init_args.instruction",
        instruction,
    )
    table = pq.read_table(out / "embeddings.parquet").to_pydict()
    assert table["text"] == TEXTS and table["id"] == [f"d{i}" for i in range(len(TEXTS))]
    encoder = Encoder(EncoderSettings(backbone=str(tiny_bert_dir), max_length=32, normalize=True)).eval()
    expected = encoder.encode(TEXTS, instruction=instruction)
    torch.testing.assert_close(torch.tensor(table["embedding"]), expected, atol=1e-5, rtol=1e-5)


def test_text_data_module_declares_no_evaluation_sets_and_names_a_bad_row(tmp_path):
    data = TextDataModule(str(tmp_path / "t.jsonl"), batch_size=2)
    sets = evaluation_sets(data)
    assert (sets.val_names, sets.sts_val_names, sets.test_names) == ([], [], [])
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": ""}) + "\n")
    with pytest.raises(ValueError, match=r"t\.jsonl.*row"):
        data.setup("predict")
