"""The shipped distillation config as a pipeline stage: it starts from the previous stage's export (the student) and
distils a fixed teacher into it, cut to its first layer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from lightembed.cli import cli_main
from lightembed.encoder import Encoder

ROOT = Path(__file__).resolve().parents[2]
COSENT = [ROOT / "configs/trainer/cpu.yaml", ROOT / "configs/model/cosent_minilm.yaml", ROOT / "configs/data/stsb.yaml"]


def test_distillation_stage_follows_a_contrastive_stage(tiny_bert_dir, sts_file, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_bert_dir, teacher)
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(f"Line {i} says something about item {i % 4}." for i in range(12)) + "\n")
    quiet = [
        "--trainer.max_epochs=1",
        "--trainer.val_check_interval=1.0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.precision=32-true",
        "--data.init_args.batch_size=4",
        "--data.init_args.val=" + json.dumps({"tiny": str(sts_file)}),
    ]
    cosent_args = [
        "--model.init_args.encoder.max_length=32",
        f"--data.init_args.train={sts_file}",
        "--data.init_args.test={}",
        *quiet,
    ]
    distill_args = [
        "--model.init_args.encoder.max_length=32",
        "--model.init_args.encoder.layers=1",
        f"--model.init_args.teacher={teacher}",
        f"--model.init_args.cache_dir={tmp_path / 'teacher-cache'}",
        f"--data.init_args.train={sentences}",
        "--data.init_args.train_format=lines",
        *quiet,
    ]
    stages = [
        {"name": "cosent", "configs": [str(c) for c in COSENT], "args": cosent_args},
        {
            "name": "distill",
            "configs": [str(ROOT / "configs/trainer/cpu.yaml"), str(ROOT / "configs/stages/distill_minilm.yaml")],
            "args": distill_args,
        },
    ]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "model": str(tiny_bert_dir), "seed": 0, "stages": stages}))
    out = tmp_path / "out"
    cli_main(["pipeline", str(path), "--output", str(out)])

    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["distill"]["status"] == "done"
    assert stages["distill"]["input_model"] == stages["cosent"]["output"]  # the student is stage 1's export
    student = Encoder.from_pretrained(stages["distill"]["output"])
    assert len(student.backbone.encoder.layer) == 1  # exported cut, as trained
    assert stages["distill"]["inputs"]["teacher"]["files"]  # the teacher is an input by content

    # new weights at the teacher's path: the distillation stage trains again, the contrastive one does not
    (teacher / "config.json").write_text((teacher / "config.json").read_text().replace("}", ', "note": 1}', 1))
    capsys.readouterr()
    cli_main(["pipeline", str(path), "--output", str(out)])
    again = json.loads((out / "manifest.json").read_text())["stages"]
    assert again["cosent"]["fingerprint"] == stages["cosent"]["fingerprint"]
    assert again["distill"]["fingerprint"] != stages["distill"]["fingerprint"]
    assert "its teacher" in capsys.readouterr().out + capsys.readouterr().err
