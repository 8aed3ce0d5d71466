"""SentEval-style classification: hand-computed accuracies on vector fixtures, protocols, pair features, errors."""

import numpy as np
import pytest

from lightembed.evaluation.classification import (
    CLASSIFIERS,
    _features,
    evaluate_classification,
    format_classification_table,
    load_labelled,
)
from lightembed.evaluation.encoding import EncodeCache


def _point(x: float, y: float, i: int) -> str:
    return f"v:{x},{y} row{i}"


def _split_set(root, write_jsonl):
    """Train: class 0 around (-1, 0), class 1 around (+1, 0). Test: 4 rows, one labelled against its side."""
    # the second coordinate is the same for both classes (+-0.1 alternating): only the first one separates them
    train = [{"text": _point(-1 - 0.1 * i, 0.1 * (-1) ** i, i), "label": 0} for i in range(6)]
    train += [{"text": _point(1 + 0.1 * i, 0.1 * (-1) ** i, 10 + i), "label": 1} for i in range(6)]
    test = [
        {"text": _point(-1.2, 0.0, 20), "label": 0},
        {"text": _point(1.3, 0.0, 21), "label": 1},
        {"text": _point(1.1, 0.0, 22), "label": 1},
        {"text": _point(-0.9, 0.0, 23), "label": 1},  # on class 0's side: always wrong
    ]
    write_jsonl(root / "toy/train.jsonl", train)
    write_jsonl(root / "toy/test.jsonl", test)
    return "toy"


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_split_protocol_accuracy_is_three_of_four(tmp_path, write_jsonl, vector_encoder, classifier):
    source = _split_set(tmp_path, write_jsonl)
    [result] = evaluate_classification(
        vector_encoder, {"toy": source}, classifiers=[classifier], data_root=str(tmp_path)
    )
    assert result.protocol == "split"
    assert (result.n_train, result.n_test, result.classes) == (12, 4, 2)
    assert result.accuracy == pytest.approx(75.0)
    # macro F1: class 0 precision 1/2 recall 1 -> 2/3; class 1 precision 1 recall 2/3 -> 4/5
    assert result.f1 == pytest.approx((2 / 3 + 4 / 5) / 2 * 100)


def test_kfold_protocol_for_a_set_without_splits(tmp_path, write_jsonl, vector_encoder):
    # 20 rows, 10 per side; 2 rows carry the other side's label -> each is misclassified when held out
    rows = [{"text": _point(-1 - 0.05 * i, 0.1 * (-1) ** i, i), "label": 0} for i in range(10)]
    rows += [{"text": _point(1 + 0.05 * i, 0.1 * (-1) ** i, 10 + i), "label": 1} for i in range(10)]
    rows[3]["label"], rows[14]["label"] = 1, 0
    write_jsonl(tmp_path / "flat/all.jsonl", rows)
    [result] = evaluate_classification(vector_encoder, {"flat": "flat"}, folds=5, data_root=str(tmp_path))
    assert result.protocol == "5-fold"
    assert len(result.fold_accuracies) == 5
    # equal folds of 4 rows: the mean of fold accuracies is the overall accuracy 18/20
    assert result.accuracy == pytest.approx(90.0)
    assert result.accuracy_std is not None


def test_pair_sets_use_senteval_features(tmp_path):
    class Fixed:
        def encode(self, sentences, **kwargs):
            table = {"a": [1.0, 2.0], "b": [3.0, -1.0]}
            return np.array([table[s] for s in sentences])

    features = _features(EncodeCache(Fixed()), [("a", "b")], pairs=True)
    # [u, v, |u - v|, u * v]
    np.testing.assert_allclose(features, [[1, 2, 3, -1, 2, 3, 3, -2]])


def test_pair_set_end_to_end(tmp_path, write_jsonl, vector_encoder):
    # label 1 iff the two sentences have the same vector: |u - v| separates them
    rows = []
    for i in range(12):
        same = i % 2 == 1
        rows.append(
            {"sentence1": _point(1, i, i), "sentence2": _point(1, i if same else -i - 3, 100 + i), "label": int(same)}
        )
    write_jsonl(tmp_path / "pairs/train.jsonl", rows[:8] * 2)
    write_jsonl(tmp_path / "pairs/test.jsonl", rows[8:])
    data = load_labelled("pairs", "pairs", str(tmp_path))
    assert data.pairs and data.has_splits
    [result] = evaluate_classification(vector_encoder, {"pairs": "pairs"}, classifiers=["knn"], data_root=str(tmp_path))
    assert result.n_test == 4


def test_c_grid_uses_the_validation_split_when_there_is_one(tmp_path, write_jsonl, vector_encoder):
    source = _split_set(tmp_path, write_jsonl)
    write_jsonl(
        tmp_path / "toy/validation.jsonl",
        [{"text": _point(-1, 0, 50), "label": 0}, {"text": _point(1, 0, 51), "label": 1}],
    )
    data = load_labelled("toy", source, str(tmp_path))
    assert set(data.splits) == {"train", "validation", "test"}
    [result] = evaluate_classification(vector_encoder, {"toy": source}, c_grid=[0.5, 2.0], data_root=str(tmp_path))
    assert result.c in (0.5, 2.0)


def test_max_train_subsamples_the_train_split(tmp_path, write_jsonl, vector_encoder):
    source = _split_set(tmp_path, write_jsonl)
    [result] = evaluate_classification(vector_encoder, {"toy": source}, max_train=6, data_root=str(tmp_path))
    assert result.n_train == 6


def test_one_class_is_an_error_naming_the_file(tmp_path, write_jsonl, vector_encoder):
    write_jsonl(tmp_path / "one/all.jsonl", [{"text": _point(i, 0, i), "label": "pos"} for i in range(12)])
    with pytest.raises(ValueError, match="single class") as info:
        evaluate_classification(vector_encoder, {"one": "one"}, data_root=str(tmp_path))
    assert "all.jsonl" in str(info.value) and "single class" in str(info.value)


def test_wrong_columns_and_unknown_classifier(tmp_path, write_jsonl, vector_encoder):
    write_jsonl(tmp_path / "odd/all.jsonl", [{"sentence": "x", "label": 0}, {"sentence": "y", "label": 1}])
    with pytest.raises(ValueError, match=r"all\.jsonl.*text.*label"):
        evaluate_classification(vector_encoder, {"odd": "odd"}, data_root=str(tmp_path))
    with pytest.raises(ValueError, match="unknown classifier 'svmx'"):
        evaluate_classification(vector_encoder, {"odd": "odd"}, classifiers=["svmx"], data_root=str(tmp_path))


def test_too_few_rows_per_class_for_the_folds(tmp_path, write_jsonl, vector_encoder):
    write_jsonl(tmp_path / "small/all.jsonl", [{"text": _point(i, 0, i), "label": i % 2} for i in range(8)])
    with pytest.raises(ValueError, match="10-fold cross-validation needs at least 10 rows of every class"):
        evaluate_classification(vector_encoder, {"small": "small"}, data_root=str(tmp_path))


def test_table_has_a_column_per_classifier_and_a_mean_row(tmp_path, write_jsonl, vector_encoder):
    source = _split_set(tmp_path, write_jsonl)
    results = evaluate_classification(
        vector_encoder, {"a": source, "b": source}, classifiers=["logreg", "knn"], data_root=str(tmp_path)
    )
    table = format_classification_table(results)
    assert "| set | protocol | train | test | logreg | knn |" in table
    assert "| a | split | 12 | 4 | 75.00 | 75.00 |" in table
    assert "**75.00**" in table
    assert sum(vector_encoder.calls) == 16  # both sets and both classifiers share one encoding of the 16 texts
