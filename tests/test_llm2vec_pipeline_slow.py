"""The LLM2Vec chain on the real SmolLM2-135M for a few steps per stage (slow: converts and loads the 135M model)."""

import os
from pathlib import Path

import pytest
import yaml

from lightembed.precision import cpu_training_precision

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIGHTEMBED_DATA") or ROOT.parent / "shared" / "data")
FEW_STEPS = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.check_val_every_n_epoch=1",
    "--data.init_args.batch_size=4",
    "--trainer.enable_progress_bar=false",
    # the stage configs train in bf16-mixed, which is emulated and many times slower on CPUs without native bf16
    f"--trainer.precision={cpu_training_precision()}",
]


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "sts" / "stsb").is_dir(), reason="needs the local benchmark data (../shared/data)")
def test_llm2vec_chain_runs_end_to_end_on_smollm2(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from lightembed.api import load_encoder
    from lightembed.pipeline import run_pipeline

    monkeypatch.setenv("LIGHTEMBED_DATA", str(SHARED))
    monkeypatch.chdir(tmp_path)
    spec = yaml.safe_load((ROOT / "configs/pipelines/llm2vec_smollm2.yaml").read_text())
    for stage in spec["stages"]:
        stage["configs"] = [str(ROOT / c) for c in stage["configs"]]
        stage["args"] = FEW_STEPS
    spec["output_dir"] = str(tmp_path / "out")
    spec["evaluate"] = {"sts": ["stsb=sts/stsb/validation.jsonl"], "data_root": str(SHARED)}
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(spec))

    manifest = run_pipeline(pipeline)
    assert [manifest["stages"][s]["status"] for s in ("mntp", "simcse", "supervised")] == ["done"] * 3
    assert manifest["stages"]["simcse"]["input_model"] == manifest["stages"]["mntp"]["output"]
    final = load_encoder(manifest["stages"]["supervised"]["output"])
    assert final.backbone.config.is_causal is False  # the bidirectional switch survives every hand-off
    assert -100 < manifest["evaluation"]["sts"]["stsb"]["spearman"] < 100
