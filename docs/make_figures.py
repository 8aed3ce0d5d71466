"""Draw the README's pictures of what a run produces, from a finished `lightembed fit` run folder.

    python docs/make_figures.py checkpoints/quickstart/version_0 --data-root ../shared/data

writes ``docs/images/training_curves.png`` (training loss and validation Spearman against the step, read from the
run's TensorBoard events) and ``docs/images/class_separation.png`` (PCA of TREC question embeddings before and after
training, coloured by class: ``lightembed analyze pca``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from lightembed.evaluation.commands import analyze_main  # noqa: E402

IMAGES = Path(__file__).resolve().parent / "images"


def training_curves(run: Path, path: Path) -> None:
    """Training loss (smoothed over 20 logged points) and validation Spearman, step on the x axis."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    loss = events.Scalars("train/loss")
    val = [tag for tag in tags if tag.startswith("val/") and tag.endswith("_spearman")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps, values = [e.step for e in loss], [e.value for e in loss]
    window = 20
    smooth = [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]
    left.plot(steps, values, alpha=0.3, label="logged")
    left.plot(steps, smooth, label=f"mean of last {window}")
    left.set(title="train/loss", xlabel="step")
    left.legend()
    for tag in val:
        points = events.Scalars(tag)
        right.plot([e.step for e in points], [e.value for e in points], marker="o", label=tag)
    right.set(title="validation Spearman ×100", xlabel="step")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder: checkpoints/<name>/version_<n> (TensorBoard + export/)")
    parser.add_argument("--base", default="packaged:all-MiniLM-L6-v2", help="the model the run started from")
    parser.add_argument("--data-root", default=None, help="folder holding classification/trec (else $LIGHTEMBED_DATA)")
    ns = parser.parse_args()
    IMAGES.mkdir(exist_ok=True)
    training_curves(ns.run, IMAGES / "training_curves.png")
    pca = [f"before={ns.base}", f"after={ns.run / 'export'}", "--source", "classification/trec/test.jsonl"]
    pca += ["--limit", "500", "--plot", str(IMAGES / "class_separation.png"), "--title", "TREC questions by class"]
    analyze_main(["pca", *pca, *(["--data-root", ns.data_root] if ns.data_root else [])])
    print(f"wrote {IMAGES / 'training_curves.png'} and {IMAGES / 'class_separation.png'}")


if __name__ == "__main__":
    main()
