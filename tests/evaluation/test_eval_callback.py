"""EvaluationCallback: the evaluators during training, on a schedule, logged to TensorBoard, usable for checkpoints."""

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightembed.callbacks.evaluation import EvaluationCallback
from lightembed.data import PairDataModule
from lightembed.encoder import EncoderSettings
from lightembed.stages import ContrastiveModule


def _fit(tiny_bert_dir, sts_file, tiny_data_root, tmp_path, callback, max_steps=4, monitor="eval/accuracy_mean"):
    L.seed_everything(0, verbose=False)
    module = ContrastiveModule(EncoderSettings(backbone=str(tiny_bert_dir), max_length=32))
    data = PairDataModule(
        train=str(sts_file), val={"tiny": str(sts_file)}, tokenizer=str(tiny_bert_dir), max_length=32, batch_size=4
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=monitor, mode="max", save_top_k=1)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        val_check_interval=1,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=1,
        logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=[callback, checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    return trainer, checkpoint


def test_scores_are_logged_on_schedule_and_select_the_best_checkpoint(
    tiny_bert_dir, sts_file, tiny_data_root, tmp_path
):
    callback = EvaluationCallback(
        sts={"tiny": str(sts_file)},
        classification={"trec": "classification/trec"},
        clustering={"trec": "classification/trec/train.jsonl"},
        data_root=str(tiny_data_root),
        every_n_validations=2,
        folds=2,
    )
    trainer, checkpoint = _fit(tiny_bert_dir, sts_file, tiny_data_root, tmp_path, callback)
    # 4 validations (one per step; the sanity check does not count) -> evaluations at the 1st and 3rd
    assert callback.validations == 4
    assert [h["step"] for h in callback.history] == [1, 3]
    metrics = trainer.callback_metrics
    for name in ("eval/tiny_spearman", "eval/trec_accuracy", "eval/accuracy_mean", "eval/trec_v_measure"):
        assert name in metrics
    assert checkpoint.best_model_path and checkpoint.best_model_score is not None
    assert float(checkpoint.best_model_score) == pytest.approx(max(h["eval/accuracy_mean"] for h in callback.history))
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "eval/trec_accuracy" in tags and "eval/spearman_mean" in tags


def test_step_schedule_and_validation(tiny_bert_dir, sts_file, tiny_data_root, tmp_path):
    callback = EvaluationCallback(
        sts={"tiny": str(sts_file)}, every_n_validations=0, every_n_train_steps=2, data_root=str(tiny_data_root)
    )
    _fit(tiny_bert_dir, sts_file, tiny_data_root, tmp_path, callback, monitor="val/spearman_mean")
    assert [h["step"] for h in callback.history] == [2, 4]
    with pytest.raises(ValueError, match="at least one"):
        EvaluationCallback()


def test_retrieval_metrics_are_logged_during_validation(tiny_bert_dir, sts_file, tiny_data_root, tmp_path):
    import json

    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = ["a man plays guitar", "a cat sleeps", "children play soccer", "the sky is blue"]
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs))
    )
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "someone playing music"}) + "\n")
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq\td0\t1\n")
    callback = EvaluationCallback(
        retrieval={"toy": str(folder)}, retrieval_split="dev", retrieval_ks=[1, 10], every_n_validations=1
    )
    trainer, checkpoint = _fit(tiny_bert_dir, sts_file, tiny_data_root, tmp_path, callback, 2, "eval/ndcg@10_mean")
    metrics = trainer.callback_metrics
    for name in ("eval/toy_ndcg@10", "eval/toy_mrr@1", "eval/toy_recall@10", "eval/ndcg@10_mean"):
        assert name in metrics
    assert float(metrics["eval/toy_recall@10"]) == 1.0  # 4 documents: the relevant one is always in the top 10
    assert checkpoint.best_model_score is not None
