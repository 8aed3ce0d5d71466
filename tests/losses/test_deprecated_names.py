"""The loss names before the rename still import, with a DeprecationWarning naming the new class."""

from __future__ import annotations

import importlib

import pytest

import lightembed.losses as losses
from lightembed.losses import AngleDifferenceLoss, AnglEObjectiveLoss


@pytest.mark.parametrize(
    ("old", "new"),
    [("AngleLoss", AngleDifferenceLoss), ("AnglELoss", AnglEObjectiveLoss)],
)
def test_old_name_warns_and_is_the_new_class(old, new):
    with pytest.warns(DeprecationWarning, match=rf"lightembed\.losses\.{old} is deprecated.*{new.__name__}"):
        cls = getattr(losses, old)
    assert cls is new


def test_old_name_in_from_import_warns():
    with pytest.warns(DeprecationWarning, match="AnglEObjectiveLoss"):
        from lightembed.losses import AnglELoss  # noqa: F401
    assert AnglELoss is AnglEObjectiveLoss


def test_new_names_import_from_their_modules():
    assert importlib.import_module("lightembed.losses.angle_difference").AngleDifferenceLoss is AngleDifferenceLoss
    assert importlib.import_module("lightembed.losses.angle_objective").AnglEObjectiveLoss is AnglEObjectiveLoss
    assert {"AngleDifferenceLoss", "AnglEObjectiveLoss"} <= set(losses.__all__)
    assert not {"AngleLoss", "AnglELoss"} & set(losses.__all__)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="NoSuchLoss"):
        losses.NoSuchLoss  # noqa: B018


def test_old_class_path_in_yaml_resolves():
    from jsonargparse import ArgumentParser
    from torch import nn

    parser = ArgumentParser()
    parser.add_argument("--loss", type=nn.Module)
    with pytest.warns(DeprecationWarning, match="AnglEObjectiveLoss"):
        cfg = parser.parse_args(
            ['--loss={"class_path": "lightembed.losses.AnglELoss", "init_args": {"ibn_weight": 0.5}}']
        )
        loss = parser.instantiate_classes(cfg).loss
    assert isinstance(loss, AnglEObjectiveLoss)
    assert loss.ibn_weight == 0.5
