"""benchmarks/loss_table.py: every table row points at shipped configs, and the MR sample is stratified and fixed."""

import importlib.util
from pathlib import Path

import numpy as np

from lightembed.evaluation.classification import LabelledSet

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("loss_table", ROOT / "benchmarks" / "loss_table.py")
loss_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loss_table)


def _labelled(n_per_class: tuple[int, ...]) -> LabelledSet:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    texts = [f"text {i}" for i in range(len(labels))]
    return LabelledSet("toy", "toy.jsonl", "'toy'", False, list(range(len(n_per_class))), {"all": (texts, labels)})


def test_every_row_has_its_configs():
    # a renamed config would otherwise drop its row from the table as "skipped"
    present, missing = loss_table.available(list(loss_table.LOSSES))
    assert missing == [] and present == list(loss_table.LOSSES)
    for name, (_, data, _) in loss_table.LOSSES.items():
        assert (ROOT / "configs" / "data" / f"{data}.yaml").exists(), name


def test_fit_args_override_the_budget_and_keep_the_configs():
    args = loss_table.fit_args("in_batch_negatives", steps=7, batch_size=12, seed=3, data_root="/data", run_dir="/run")
    assert args[0] == "fit"
    configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    assert [Path(c).name for c in configs] == ["cpu.yaml", "triplet_minilm.yaml", "snli_triplets.yaml"]
    options = dict(zip(args[1::2], args[2::2], strict=False))
    assert options["--trainer.max_steps"] == "7"
    assert options["--trainer.default_root_dir"] == "/run"  # the run's config.yaml stays out of the working tree
    assert options["--data.init_args.batch_size"] == "12"
    assert options["--seed_everything"] == "3" and options["--data.init_args.seed"] == "3"
    assert "InBatchNegativesLoss" in options["--model.init_args.loss"]


def test_sample_set_is_stratified_deterministic_and_in_file_order():
    data = _labelled((300, 100))
    sample = loss_table.sample_set(data, 80, seed=0)
    texts, labels = sample.splits["all"]
    assert len(texts) == 80
    assert np.bincount(labels).tolist() == [60, 20]  # the 3:1 class ratio is kept
    positions = [int(t.split()[1]) for t in texts]
    assert positions == sorted(positions)
    assert [data.splits["all"][1][p] for p in positions] == labels.tolist()  # texts keep their labels
    again, _ = loss_table.sample_set(data, 80, seed=0).splits["all"]
    assert again == texts
    assert loss_table.sample_set(data, 80, seed=1).splits["all"][0] != texts


def test_sample_set_keeps_a_small_set_whole():
    data = _labelled((5, 5))
    assert loss_table.sample_set(data, None, seed=0) is data
    assert loss_table.sample_set(data, 10, seed=0) is data


def test_table_is_sorted_by_stsb():
    rows = {
        "a": {"data": "x", "stsb_test": 70.0, "trec_acc": 1.0, "mr_acc": 2.0, "train_seconds": 3.0},
        "b": {"data": "y", "stsb_test": 80.0, "trec_acc": 1.0, "mr_acc": 2.0, "train_seconds": None},
    }
    lines = loss_table.format_table(rows).splitlines()
    assert lines[2].startswith("| b |") and lines[3].startswith("| a |")


def test_add_rows_only_to_a_table_of_the_same_budget():
    budget = {"steps": 150, "batch_size": 32, "seed": 0}
    previous = {**budget, "losses": {"angle": {"stsb_test": 1.0}}, "skipped": ["gist"], "env": {"git_commit": "a"}}
    merged = loss_table.add_rows(previous, {"gist": {"stsb_test": 2.0}}, budget, "b")
    assert merged["losses"] == {"angle": {"stsb_test": 1.0}, "gist": {"stsb_test": 2.0}}
    assert merged["skipped"] == [] and merged["env"]["added_later"] == {"gist": "b"}
    assert previous["losses"] == {"angle": {"stsb_test": 1.0}}  # the input is left alone
    assert loss_table.add_rows(previous, {"gist": {}}, {**budget, "steps": 100}, "b") is None
    assert loss_table.add_rows(None, {"gist": {}}, budget, "b") is None
