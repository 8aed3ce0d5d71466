"""Arms pipelines: schema errors, a stage shared by two arms trains once, per-arm scores and seconds, resume."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from lightembed.cli import cli_main
from lightembed.pipeline import PipelineError, SharedStages, load_pipeline, runner


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def write_arms(write_pipeline):
    """``write_arms(path, model, sts_file, arms, **extra)``: pool s1 (1 epoch) and s2 (2 epochs) of CoSENT on the
    12-row STS fixture, and the given arms."""

    def write(path: Path, model: Path | str, sts_file: Path, arms, **extra) -> Path:
        return write_pipeline(path, model, sts_file, epochs=(1, 2), arms=arms, **extra)

    return write


@pytest.fixture
def fits(monkeypatch) -> list[str]:
    """The run folder of every stage trained (``lightembed fit`` run) from now on."""
    trained: list[str] = []
    real = runner._run_stage

    def counting(argv: list[str], stage: str):
        trained.append(next(a.split("=", 1)[1] for a in argv if a.startswith("--trainer.default_root_dir=")))
        return real(argv, stage)

    monkeypatch.setattr(runner, "_run_stage", counting)
    return trained


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ({"a": ["s1", "s3"], "b": ["s2"]}, r"arms\.a: unknown stage\(s\) \['s3'\]"),
        ({"a": [], "b": ["s1", "s2"]}, r"arms\.a: is empty"),
        ({"a": None, "b": ["s1", "s2"]}, r"arms\.a: is empty"),
        ({}, r"arms: is empty"),
        ({"a": ["s1", "s1", "s2"]}, r"arms\.a: stage\(s\) \['s1'\] appear twice"),
        ({"a": ["s1", "s2"], "b": ["s1", "s2"]}, r"arms\.b: runs the same stages as arm 'a'"),
        ({"a": ["s1"]}, r"arms: stage\(s\) \['s2'\] are in no arm"),
        ({"a/b": ["s1", "s2"]}, r"arms: arm name 'a/b' is not a folder name"),
        ({"a": "s1 s2"}, r"arms\.a: expected list"),
        (["s1", "s2"], r"arms: expected dict"),
    ],
)
def test_arm_errors_name_the_file_and_the_arm(write_arms, arms, message, sts_file, tmp_path):
    path = write_arms(tmp_path / "p.yaml", "packaged:all-MiniLM-L6-v2", sts_file, arms)
    with pytest.raises(PipelineError, match=re.escape(f"{tmp_path / 'p.yaml'}: ") + message):
        load_pipeline(path)


def test_arm_files_refuse_repeated_keys_and_an_adapter_hand_off_at_an_arm_start(write_arms, sts_file, tmp_path):
    path = write_arms(tmp_path / "p.yaml", "packaged:all-MiniLM-L6-v2", sts_file, {"a": ["s1", "s2"]})
    path.write_text(path.read_text() + "arms:\n  b: [s1, s2]\n")  # a second `arms:` key
    with pytest.raises(PipelineError, match=r"p\.yaml: not valid YAML: .*key 'arms' appears twice"):
        load_pipeline(path)
    spec = yaml.safe_load(write_arms(path, "packaged:all-MiniLM-L6-v2", sts_file, {"a": ["s1", "s2"]}).read_text())
    spec["stages"][1]["init_adapter_from_previous"] = True  # fine in arm a (s1 before it), not in arm b
    spec["arms"]["b"] = ["s2"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(PipelineError, match=r"arms\.b: its first stage 's2' sets init_adapter_from_previous"):
        load_pipeline(path)
    spec["arms"] = {"a": ["s1", "s2"]}
    path.write_text(yaml.safe_dump(spec))
    assert [arm.stages for arm in load_pipeline(path).arms] == [("s1", "s2")]


def test_a_stage_shared_by_two_arms_trains_once_and_each_arm_is_scored(
    write_arms, tiny_bert_dir, sts_file, tmp_path, fits, capsys
):
    arms = {"long": ["s1", "s2"], "short": ["s1"], "direct": ["s2"]}
    path = write_arms(tmp_path / "p.yaml", tiny_bert_dir, sts_file, arms, evaluate={"sts": [f"tiny={sts_file}"]})
    out = tmp_path / "out"
    cli_main(["pipeline", str(path), "--output", str(out), "--dry-run"])
    printed = capsys.readouterr().out
    assert "arm short: s1\n" in printed and "[s1] reuse the export of arm long, stage s1" in printed
    assert printed.count("[s1] run") == 1 and printed.count("[s2] run") == 2
    assert not out.exists()

    cli_main(["pipeline", str(path), "--output", str(out)])
    long, short, direct = (out / "arms" / a for a in ("long", "short", "direct"))
    assert fits == [str(long / "s1"), str(long / "s2"), str(direct / "s2")]  # short's s1 is long's
    top = json.loads((out / "manifest.json").read_text())
    records = {a: json.loads((out / "arms" / a / "manifest.json").read_text())["stages"] for a in arms}
    shared = records["short"]["s1"]
    assert shared["reused_from"] == {"arm": "long", "stage": "s1", "run_dir": str(long / "s1")}
    assert shared["output"] == records["long"]["s1"]["output"] == str(long / "s1" / "export")
    assert shared["fingerprint"] == records["long"]["s1"]["fingerprint"]
    assert not (short / "s1").exists()  # referenced, not copied
    assert records["direct"]["s2"]["fingerprint"] != records["long"]["s2"]["fingerprint"]  # other input model
    for arm, chain in arms.items():
        entry = top["arms"][arm]
        assert entry["status"] == "done" and entry["chain"] == chain
        walls = [records[arm][s]["wall_time_s"] for s in chain]
        assert entry["seconds"] == pytest.approx(sum(walls), abs=0.01)
        final, before = entry["evaluation"]["final"], entry["evaluation"]["last_stage_input"]
        assert final["model"] == records[arm][chain[-1]]["output"]
        assert before["model"] == records[arm][chain[-1]]["input_model"]
        assert before["settings"] == {"pooling": "mean", "max_length": 32}  # as the stage embedded its input
        for evaluation in (final, before):
            assert -100 <= evaluation["sts"]["tiny"]["spearman"] <= 100
    assert top["arms"]["short"]["reused"] == {"s1": "long/s1"}
    assert top["arms"]["short"]["seconds_trained"] == 0
    assert top["arms"]["short"]["seconds_reused"] == records["long"]["s1"]["wall_time_s"]
    assert top["arms"]["short"]["evaluation"]["last_stage_input"]["model"] == str(tiny_bert_dir)
    assert top["arms"]["long"]["evaluation"]["last_stage_input"]["model"] == str(long / "s1" / "export")

    # rerun: nothing trains, scores are kept
    cli_main(["pipeline", str(path), "--output", str(out)])
    assert len(fits) == 3
    again = json.loads((out / "manifest.json").read_text())
    for arm, entry in again["arms"].items():
        assert entry["evaluation"] == top["arms"][arm]["evaluation"]

    # --restart s1: long's s1 trains again (its old folder moved aside), short takes the new export, long's s2
    # follows its new input, direct's s2 (from the base model) is untouched
    cli_main(["pipeline", str(path), "--output", str(out), "--restart", "s1"])
    assert fits[3:] == [str(long / "s1"), str(long / "s2")]
    assert len(list((out / "arms" / "long").glob("s1.stale-*"))) == 1
    after = json.loads((out / "arms" / "short" / "manifest.json").read_text())["stages"]["s1"]
    assert after["output"] == str(long / "s1" / "export") and (long / "s1" / "export" / "lightembed.json").is_file()
    assert (
        after["finished_at"] == json.loads((out / "arms/long/manifest.json").read_text())["stages"]["s1"]["finished_at"]
    )


def test_an_arm_reusing_a_stage_survives_the_original_being_moved_aside(
    write_arms, tiny_bert_dir, sts_file, tmp_path, fits
):
    """The reusing arm only references the export: when the original arm's run folder is moved aside (it changed),
    the later arm reuses the new export, or trains the stage itself when no earlier arm has it any more."""
    path = write_arms(tmp_path / "p.yaml", tiny_bert_dir, sts_file, {"first": ["s1", "s2"], "second": ["s1"]})
    out = tmp_path / "out"
    cli_main(["pipeline", str(path), "--output", str(out)])
    assert len(fits) == 2
    spec = yaml.safe_load(path.read_text())
    spec["arms"] = {"first": ["s2"], "second": ["s1"]}  # s1 is no longer in an earlier arm
    path.write_text(yaml.safe_dump(spec))
    stale = out / "arms" / "first" / "s1"
    stale.rename(out / "arms" / "first" / "s1.stale-test")  # what a --restart of the old layout would do
    cli_main(["pipeline", str(path), "--output", str(out)])
    assert fits[2:] == [str(out / "arms/first/s2"), str(out / "arms/second/s1")]
    second = json.loads((out / "arms/second/manifest.json").read_text())["stages"]["s1"]
    assert second.get("reused_from") is None and second["output"] == str(out / "arms/second/s1/export")


def test_a_reused_record_is_offered_as_its_original(tmp_path):
    """Arms reordered: the first arm holds a reuse record; a later arm still reuses the stage where it ran."""
    export = tmp_path / "a" / "s1" / "export"
    export.mkdir(parents=True)
    (export / "lightembed.json").write_text("{}")
    original = {"status": "done", "fingerprint": "f1", "output": str(export), "run_dir": str(export.parent)}
    original["export_files"] = {"lightembed.json": hashlib.sha256(b"{}").hexdigest()}
    shared = SharedStages(dry_run=False)
    shared.arm = "b"
    reuse_record = {**original, "reused_from": {"arm": "a", "stage": "s1", "run_dir": str(export.parent)}}
    shared.add("s1", "f1", reuse_record, fresh=False)
    shared.arm = "c"
    found = shared.reuse("s1", {"status": "pending"}, "f1", upstream_ran=False, restart=False)
    assert found is not None
    record, fresh = found
    assert record["reused_from"] == {"arm": "a", "stage": "s1", "run_dir": str(export.parent)} and not fresh
    assert shared.reuse("s1", {"status": "pending"}, "f1", upstream_ran=False, restart=True) is None  # not fresh
    assert shared.reuse("s1", {"status": "pending"}, "other", upstream_ran=False, restart=False) is None
    (export / "lightembed.json").write_text('{"changed": 1}')  # a damaged original is not reused
    assert shared.reuse("s1", {"status": "pending"}, "f1", upstream_ran=False, restart=False) is None
