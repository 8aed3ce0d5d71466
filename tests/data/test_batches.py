"""The stage/data contract: a data module that does not declare its evaluation sets is named in the error."""

import lightning as L
import pytest

from lightembed.data.batches import EvaluationSets, evaluation_sets


class Undeclared(L.LightningDataModule):
    batch_size = 8


class Declared(L.LightningDataModule):
    batch_size = 8
    val_names = ["text", "stsb"]
    sts_val_names = ["stsb"]
    test_names = ["stsb"]


def test_an_undeclared_data_module_is_named_with_what_it_lacks():
    with pytest.raises(TypeError, match=r"Undeclared does not declare \['val_names', 'sts_val_names', 'test_names'\]"):
        evaluation_sets(Undeclared())


def test_a_declared_data_module_passes_and_satisfies_the_protocol():
    module = Declared()
    assert evaluation_sets(module) is module
    assert isinstance(module, EvaluationSets)
