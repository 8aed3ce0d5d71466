"""PCA pictures and analysis plots are written as PNG; class separation is measured by the silhouette score."""

import numpy as np
import pytest

from lightembed.evaluation.analysis import LayerSimilarity, PrefixModeResult, PrefixTestResult
from lightembed.evaluation.plots import (
    pca_2d,
    plot_class_separation,
    plot_layer_similarity,
    plot_prefix_test,
    separation,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _blobs(spread: float):
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0]])
    labels = np.repeat([0, 1, 2], 20)
    return centres[labels] + rng.normal(scale=spread, size=(60, 4)), labels


def test_pca_picture_before_and_after(tmp_path):
    before, labels = _blobs(spread=5.0)
    after, _ = _blobs(spread=0.3)
    path = tmp_path / "pics" / "separation.png"
    scores = plot_class_separation(
        {"before": before, "after": after}, labels, path, label_names={0: "a", 1: "b", 2: "c"}
    )
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert scores["after"] > scores["before"]
    assert scores["after"] == pytest.approx(separation(after, labels))


def test_pca_coordinates_and_errors(tmp_path):
    x = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, -0.5, 0.0]])
    coords, ratio = pca_2d(x)
    # the first component is the x axis (variance 0.5), the second the y axis (variance 0.125)
    np.testing.assert_allclose(np.abs(coords[:, 0]), [1, 1, 0, 0], atol=1e-9)
    np.testing.assert_allclose(ratio, [0.8, 0.2])
    with pytest.raises(ValueError, match="png"):
        plot_class_separation(x, [0, 0, 1, 1], tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="two classes"):
        plot_class_separation(x, [0, 0, 0, 0], tmp_path / "x.png")


def test_analysis_plots(tmp_path):
    sims = LayerSimilarity([0, 1, 2], [1.0, 0.9, 0.7], [0.0, 0.05, 0.1], texts=2, tokens=10)
    assert plot_layer_similarity({"tiny": sims}, tmp_path / "layers.png").read_bytes()[:8] == PNG_MAGIC
    mode = PrefixModeResult([0.0, 0.5, 0.75], [1.0, 0.0, 0.0], [0.0, 0.01, 0.02], [0.9, 0.8], [0.85, 0.8])
    result = PrefixTestResult(2, "mean", [0, 1, 2], mode, mode)
    assert plot_prefix_test(result, tmp_path / "prefix.png").read_bytes()[:8] == PNG_MAGIC
