"""Clustering evaluator: KMeans + v-measure against hand-computed values."""

import math

import numpy as np
import pytest

from lightembed.evaluation.clustering import cluster_score, evaluate_clustering, format_clustering_table


def _entropy(counts):
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c)


def test_well_separated_classes_score_100(tmp_path, write_jsonl, vector_encoder):
    rows = [
        {"text": f"v:{x},{y} r{i}{j}", "label": name}
        for i, (x, y, name) in enumerate([(10, 0, "a"), (0, 10, "b"), (-10, -10, "c")])
        for j in range(4)
    ]
    for j, row in enumerate(rows):  # small jitter inside each class
        x, y = row["text"].split()[0][2:].split(",")
        row["text"] = f"v:{float(x) + 0.1 * (j % 3)},{float(y) - 0.1 * (j % 2)} r{j}"
    write_jsonl(tmp_path / "three/all.jsonl", rows)
    [result] = evaluate_clustering(vector_encoder, {"three": "three"}, data_root=str(tmp_path))
    assert result.v_measure == pytest.approx(100.0)
    assert result.ari == pytest.approx(100.0)
    assert (result.n, result.clusters, result.classes) == (12, 3, 3)
    assert "| three | 12 | 3 | 100.00 | 100.00 |" in format_clustering_table([result])


def test_v_measure_of_an_imperfect_clustering_matches_the_formula():
    # points 0, 0.1, 0.2 and 10 -> KMeans(k=2) gives clusters {0, 0.1, 0.2} and {10}; labels 0, 0, 1, 1
    embeddings = np.array([[0.0], [0.1], [0.2], [10.0]])
    labels = np.array([0, 0, 1, 1])
    v, _, assigned = cluster_score(embeddings, labels)
    assert len(set(assigned[:3].tolist())) == 1 and assigned[3] != assigned[0]
    h_c = _entropy([2, 2])
    h_k = _entropy([3, 1])
    h_c_given_k = 3 / 4 * _entropy([2, 1])  # the big cluster holds 2 of class 0 and 1 of class 1
    h_k_given_c = 2 / 4 * _entropy([1, 1])  # class 1 is split over both clusters
    homogeneity = 1 - h_c_given_k / h_c
    completeness = 1 - h_k_given_c / h_k
    expected = 2 * homogeneity * completeness / (homogeneity + completeness)
    assert v == pytest.approx(expected * 100)


def test_single_class_is_an_error_naming_the_file(tmp_path, write_jsonl, vector_encoder):
    write_jsonl(tmp_path / "mono.jsonl", [{"text": f"v:{i},0 r", "label": 1} for i in range(5)])
    with pytest.raises(ValueError, match=r"mono\.jsonl.*single class"):
        evaluate_clustering(vector_encoder, {"mono": str(tmp_path / "mono.jsonl")})
