"""lightembed's supervised stage trains like sentence-transformers' trainer, step for step.

With the same seed both draw the same batches (``EpochRandomSampler``), and with the same loss (CoSENT), optimizer
(AdamW, no weight decay on biases and norms), warmup schedule (rounded up) and gradient clipping they end with the
same weights. This is what makes ``benchmarks/stsb_angle.py`` a paired comparison: lightembed's objectives against
the peer's on the same batches. Dropout is off so the two runs do not depend on how each consumes the global RNG.
"""

from __future__ import annotations

import json
import random

import lightning as L
import pytest
import torch

from lightembed.data import PairDataModule
from lightembed.encoder import EncoderSettings
from lightembed.losses import CoSENTLoss
from lightembed.stages import ContrastiveModule

BATCH, LR, WARMUP, MAX_LEN = 8, 1e-3, 0.15, 32


@pytest.fixture(scope="module")
def no_dropout_bert_dir(tmp_path_factory, tiny_bert_dir, tokenizer):
    """The tiny random BERT with every dropout rate 0."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def scored_pairs(tmp_path_factory):
    """50 scored pairs (7 batches of 8, the last one short)."""
    rng = random.Random(0)
    words = "a man woman dog cat plays runs eats guitar ball food in the park house quickly".split()
    rows = [
        {
            "sentence1": " ".join(rng.choices(words, k=rng.randint(3, 9))),
            "sentence2": " ".join(rng.choices(words, k=rng.randint(3, 9))),
            "score": round(rng.uniform(0, 5), 1),
        }
        for _ in range(50)
    ]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _train_lightembed(folder, path, seed: int, length_chunking: float | None = None) -> ContrastiveModule:
    L.seed_everything(seed, verbose=False)
    module = ContrastiveModule(
        EncoderSettings(backbone=str(folder), pooling="mean", max_length=MAX_LEN),
        loss=CoSENTLoss(),
        length_chunking=length_chunking,
        optimizer=lambda params: torch.optim.AdamW(params, lr=LR, weight_decay=0.01, fused=True),
        warmup_ratio=WARMUP,
    )
    data = PairDataModule(
        train=str(path),
        train_format="scored_pairs",
        tokenizer=str(folder),
        max_length=MAX_LEN,
        batch_size=BATCH,
        seed=seed,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    return module


def _train_peer(sentence_transformers, folder, path, seed: int, out):
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss as PeerCoSENT

    from lightembed.data.sources import load_source

    model = sentence_transformers.SentenceTransformer(str(folder), device="cpu")  # Transformer + mean pooling
    model.max_seq_length = MAX_LEN
    args = sentence_transformers.SentenceTransformerTrainingArguments(
        output_dir=str(out),
        num_train_epochs=1,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        warmup_steps=WARMUP,  # a float below 1: the ratio
        weight_decay=0.01,
        seed=seed,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    train = load_source(str(path), columns=("sentence1", "sentence2", "score"))
    trainer = sentence_transformers.SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train, loss=PeerCoSENT(model)
    )
    trainer.train()
    return model


@pytest.mark.parametrize("length_chunking", [None, 0.0], ids=["one-pass-per-field", "length-chunks"])
def test_cosent_trains_like_the_sentence_transformers_trainer(
    no_dropout_bert_dir, scored_pairs, tmp_path, length_chunking
):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["a man plays the guitar in the park", "the cat eats food", "a woman runs"]
    start = ContrastiveModule(
        EncoderSettings(backbone=str(no_dropout_bert_dir), pooling="mean", max_length=MAX_LEN)
    ).encode(texts)

    ours = _train_lightembed(no_dropout_bert_dir, scored_pairs, seed=0, length_chunking=length_chunking).encode(texts)
    peer = torch.as_tensor(
        _train_peer(sentence_transformers, no_dropout_bert_dir, scored_pairs, 0, tmp_path).encode(texts)
    )

    assert (ours - start).abs().max() > 1e-2  # training moved the embeddings
    torch.testing.assert_close(ours, peer, atol=1e-5, rtol=1e-4)
    other_seed = _train_lightembed(no_dropout_bert_dir, scored_pairs, seed=1).encode(texts)
    assert (other_seed - peer).abs().max() > 1e-3  # the batch order matters, so it is what pairs the two runs
