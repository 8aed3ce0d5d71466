"""STS scoring during validation and test: cosine similarity of each pair against its gold score."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from lightembed.data.batches import Features, PairBatch


class STSMetrics(nn.Module):
    """Spearman and Pearson (×100) of pair cosines for each named STS set; one loader per set, in ``names`` order."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = list(names)
        self.sets = nn.ModuleList(
            nn.ModuleDict({"spearman": SpearmanCorrCoef(), "pearson": PearsonCorrCoef()}) for _ in self.names
        )

    def update(self, embed: Callable[[Features], Tensor], batch: PairBatch, index: int) -> None:
        """Score one batch of loader ``index`` (its position among the STS loaders)."""
        if not 0 <= index < len(self.sets):
            raise ValueError(
                f"STS dataloader #{index} has no name: the data module names {len(self.names)} STS sets "
                f"({self.names}); give it `sts_val_names`/`test_names` for every STS loader"
            )
        anchor = embed(batch["anchor"]).float()  # (B, H)
        positive = embed(batch["positive"]).float()  # (B, H)
        cosine = F.cosine_similarity(anchor, positive, dim=-1)  # (B,)
        for metric in self.sets[index].values():
            metric.update(cosine, batch["score"].float())

    def compute(self) -> dict[str, Tensor]:
        """``{"<set>_spearman", "<set>_pearson", ..., "spearman_mean"}``, then reset for the next epoch."""
        scores: dict[str, Tensor] = {}
        spearmans = []
        for name, group in zip(self.names, self.sets, strict=True):
            scores[f"{name}_spearman"] = group["spearman"].compute() * 100
            scores[f"{name}_pearson"] = group["pearson"].compute() * 100
            spearmans.append(scores[f"{name}_spearman"])
            for metric in group.values():
                metric.reset()
        if spearmans:
            scores["spearman_mean"] = torch.stack(spearmans).mean()
        return scores
