"""The evaluation suite as a Lightning callback: STS, classification, clustering and retrieval scores logged during
training.

The callback runs the same evaluators as ``lightembed evaluate`` on the module being trained (its ``encode``: length
sorted, ``inference_mode``, optional bf16) and logs one scalar per score to the trainer's loggers (TensorBoard):

* ``<prefix>/<set>_spearman`` and ``<prefix>/<set>_pearson`` per STS set, ``<prefix>/spearman_mean``;
* ``<prefix>/<set>_accuracy`` per classification set (``<set>_<classifier>_accuracy`` for classifiers other than
  ``logreg``), ``<prefix>/accuracy_mean`` (logistic regression);
* ``<prefix>/<set>_v_measure`` per clustering set, ``<prefix>/v_measure_mean``;
* ``<prefix>/<set>_<metric>@<k>`` per retrieval set (nDCG, MRR, Recall, Precision, MAP, accuracy at each of
  ``retrieval_ks``), ``<prefix>/ndcg@10_mean`` when 10 is a cut-off; ``<prefix>/<set>_map`` and
  ``<prefix>/<set>_mrr@10`` per reranking set.

Schedule: at the end of every ``every_n_validations``-th validation run (sanity checks excluded; the first run
always evaluates), so a :class:`~lightning.pytorch.callbacks.ModelCheckpoint` can select the best checkpoint on any
of these names, e.g. ``monitor: eval/mr_accuracy``. On validation runs that skip the evaluation the last scores are
logged again, so the monitored key always exists and an unchanged score never counts as an improvement. With
``every_n_train_steps`` the suite also runs during training (logged against the step). ``on_test`` evaluates
after ``trainer.test`` under ``<prefix>_test/``.

YAML (``trainer.callbacks``)::

    - class_path: lightembed.callbacks.evaluation.EvaluationCallback
      init_args:
        classification: {mr: classification/mr, trec: classification/trec}
        retrieval: {snli: benchmarks/data/retrieval/snli}   # BEIR folder, qrels/dev.tsv with retrieval_split: dev
        retrieval_split: dev
        folds: 5
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: eval/accuracy_mean, mode: max}

Under DDP the suite runs on global rank 0 and the scores are broadcast to every rank; for sharded strategies
(FSDP, DeepSpeed ZeRO-3), whose forward pass needs every rank, set ``rank_zero_only: false``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import lightning as L

from lightembed.evaluation.report import SuiteResults, run_suite

log = logging.getLogger(__name__)


def suite_metrics(results: SuiteResults, prefix: str = "eval") -> dict[str, float]:
    """Flat ``{name: value}`` of a suite's scores, named as in the module docstring."""
    metrics: dict[str, float] = {}
    for r in results.sts:
        metrics[f"{prefix}/{r.name}_spearman"] = r.spearman
        metrics[f"{prefix}/{r.name}_pearson"] = r.pearson
    if results.sts:
        metrics[f"{prefix}/spearman_mean"] = sum(r.spearman for r in results.sts) / len(results.sts)
    logreg = []
    for r in results.classification:
        suffix = "accuracy" if r.classifier == "logreg" else f"{r.classifier}_accuracy"
        metrics[f"{prefix}/{r.name}_{suffix}"] = r.accuracy
        if r.classifier == "logreg":
            logreg.append(r.accuracy)
    if logreg:
        metrics[f"{prefix}/accuracy_mean"] = sum(logreg) / len(logreg)
    for r in results.clustering:
        metrics[f"{prefix}/{r.name}_v_measure"] = r.v_measure
    if results.clustering:
        metrics[f"{prefix}/v_measure_mean"] = sum(r.v_measure for r in results.clustering) / len(results.clustering)
    for r in results.retrieval:
        for metric, value in r.metrics.items():
            metrics[f"{prefix}/{r.name}_{metric}"] = value
    if results.retrieval and all("ndcg@10" in r.metrics for r in results.retrieval):
        metrics[f"{prefix}/ndcg@10_mean"] = sum(r.metrics["ndcg@10"] for r in results.retrieval) / len(
            results.retrieval
        )
    for r in results.reranking:
        metrics[f"{prefix}/{r.name}_map"] = r.map
        metrics[f"{prefix}/{r.name}_mrr@{r.at_k}"] = r.mrr
    return metrics


class EvaluationCallback(L.Callback):
    """Run STS/classification/clustering/retrieval evaluators on a schedule and log the scores (module docstring).

    Args:
        sts: STS sets, name -> source (``sentence1, sentence2, score``).
        classification: classification sets, name -> source (``text, label`` or ``sentence1, sentence2, label``).
        clustering: clustering sets, name -> source (``text, label``).
        retrieval: retrieval sets, name -> BEIR folder / Hub id or query/positive file
            (:mod:`lightembed.evaluation.retrieval_data`).
        reranking: reranking sets, name -> query/positive/negative file.
        classifiers: classifier names (see :data:`lightembed.evaluation.classification.CLASSIFIERS`).
        data_root: folder for relative local sources; default ``$LIGHTEMBED_DATA``.
        every_n_validations: evaluate at every n-th validation run (0 disables evaluation at validation).
        every_n_train_steps: also evaluate every n optimizer steps during training (None: never).
        on_test: evaluate after ``trainer.test`` too (logged under ``<prefix>_test/``).
        prefix: metric name prefix.
        folds: k-fold CV for sets without splits (fewer than SentEval's 10 keeps training-time evaluation cheap).
        max_train: cap on training rows of sets with a train split.
        seed: seed of folds, classifiers and KMeans.
        sts_split, clustering_split: split read for Hub ids and per-split folders.
        batch_size, precision, instruction: encoding options.
        retrieval_split: qrels split of BEIR sets (``dev`` to select checkpoints without touching the test split).
        retrieval_ks: cut-offs of the retrieval metrics.
        query_instruction: prefix of retrieval/reranking queries only, excluded from pooling.
        rank_zero_only: evaluate on global rank 0 only and broadcast (False for sharded models).
    """

    def __init__(
        self,
        sts: dict[str, str] | None = None,
        classification: dict[str, str] | None = None,
        clustering: dict[str, str] | None = None,
        retrieval: dict[str, str] | None = None,
        reranking: dict[str, str] | None = None,
        classifiers: Sequence[str] = ("logreg",),
        data_root: str | None = None,
        every_n_validations: int = 1,
        every_n_train_steps: int | None = None,
        on_test: bool = False,
        prefix: str = "eval",
        folds: int = 5,
        max_train: int | None = None,
        seed: int = 0,
        sts_split: str = "test",
        clustering_split: str = "test",
        batch_size: int = 64,
        precision: str = "float32",
        instruction: str | None = None,
        retrieval_split: str = "test",
        retrieval_ks: Sequence[int] = (1, 3, 5, 10, 100),
        query_instruction: str | None = None,
        rank_zero_only: bool = True,
    ) -> None:
        super().__init__()
        if not (sts or classification or clustering or retrieval or reranking):
            raise ValueError(
                "EvaluationCallback needs at least one of `sts`, `classification`, `clustering`, `retrieval` or "
                "`reranking`"
            )
        if every_n_validations < 0:
            raise ValueError(f"every_n_validations must be >= 0, got {every_n_validations}")
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1 or None, got {every_n_train_steps}")
        self.sts = dict(sts or {})
        self.classification = dict(classification or {})
        self.clustering = dict(clustering or {})
        self.retrieval = dict(retrieval or {})
        self.reranking = dict(reranking or {})
        self.classifiers = tuple(classifiers)
        self.data_root = data_root
        self.every_n_validations = every_n_validations
        self.every_n_train_steps = every_n_train_steps
        self.on_test = on_test
        self.prefix = prefix
        self.options = {
            "classifiers": self.classifiers,
            "data_root": data_root,
            "folds": folds,
            "max_train": max_train,
            "seed": seed,
            "sts_split": sts_split,
            "clustering_split": clustering_split,
            "batch_size": batch_size,
            "precision": precision,
            "instruction": instruction,
            "retrieval_split": retrieval_split,
            "retrieval_ks": tuple(retrieval_ks),
            "query_instruction": query_instruction,
        }
        self.rank_zero_only = rank_zero_only
        self.validations = 0
        self.last: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self._last_step_evaluated = -1

    # ------------------------------------------------------------------ core
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str) -> dict[str, float]:
        """Run the suite now on ``pl_module`` and return ``{metric name: value}`` (the same on every rank)."""
        metrics: dict[str, float] = {}
        if trainer.is_global_zero or not self.rank_zero_only:
            start = time.perf_counter()
            results = run_suite(
                pl_module,
                sts=self.sts,
                classification=self.classification,
                clustering=self.clustering,
                retrieval=self.retrieval,
                reranking=self.reranking,
                **self.options,
            )
            metrics = suite_metrics(results, prefix)
            log.info("evaluation at step %d took %.1fs", trainer.global_step, time.perf_counter() - start)
        if self.rank_zero_only and trainer.world_size > 1:
            metrics = trainer.strategy.broadcast(metrics, src=0)
        self.history.append({"step": trainer.global_step, "epoch": trainer.current_epoch, **metrics})
        return metrics

    @staticmethod
    def _log(pl_module: L.LightningModule, metrics: dict[str, float], on_step: bool) -> None:
        for name, value in metrics.items():
            pl_module.log(name, float(value), on_step=on_step, on_epoch=not on_step, add_dataloader_idx=False)

    # ----------------------------------------------------------------- hooks
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.every_n_validations:
            return
        self.validations += 1
        if (self.validations - 1) % self.every_n_validations == 0:
            self.last = self.evaluate(trainer, pl_module, self.prefix)
        self._log(pl_module, self.last, on_step=False)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not self.every_n_train_steps or step == 0 or step % self.every_n_train_steps:
            return
        if step == self._last_step_evaluated:  # gradient accumulation: several batches end on the same step
            return
        self._last_step_evaluated = step
        metrics = self.evaluate(trainer, pl_module, self.prefix)
        self._log(pl_module, metrics, on_step=True)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on_test:
            self._log(pl_module, self.evaluate(trainer, pl_module, f"{self.prefix}_test"), on_step=False)

    # ------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations, "last": dict(self.last)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))
        self.last = dict(state_dict.get("last", {}))
