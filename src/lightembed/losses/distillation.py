"""Distillation losses: a student matches a teacher's embeddings (MSE) or its score margins (MarginMSE).

Both take the student's embeddings and the teacher's targets as ``labels``, as every lightembed loss takes
embeddings: the stage (:class:`~lightembed.stages.distill.DistillationModule`) reads the teacher's embeddings from the
on-disk cache, never runs the teacher inside the loss.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightembed.losses._common import check_embeddings, to_float
from lightembed.losses.base import EmbeddingLoss

Projection = Literal["learned", "fixed"]


def _fixed_projection(student_dim: int, teacher_dim: int, seed: int) -> Tensor:
    """A seeded random ``(teacher_dim, student_dim)`` matrix with orthonormal columns (or rows, when the teacher is
    smaller): it keeps the student's norms and angles when mapping up, and is the same in every run and process."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(max(student_dim, teacher_dim), min(student_dim, teacher_dim), generator=generator)
    q, _ = torch.linalg.qr(gaussian)  # (max, min) orthonormal columns
    return q if teacher_dim >= student_dim else q.T  # (teacher_dim, student_dim)


class EmbeddingMSELoss(EmbeddingLoss):
    """Mean squared error between the student's embeddings and the teacher's ("Making Monolingual Sentence
    Embeddings Multilingual using Knowledge Distillation", Nils Reimers and Iryna Gurevych, 2020);
    sentence-transformers' ``MSELoss``::

        loss = mean_{i, d} (P s_i − t_i)_d²

    with ``s_i`` the student's embedding of text ``i``, ``t_i`` the teacher's and ``P`` the identity when both have
    the same size. When they differ, ``P`` maps the student to the teacher's size: ``"learned"`` is a linear layer
    (with bias) trained with the student, ``"fixed"`` a seeded random matrix with orthonormal columns that is never
    trained (the student alone must carry what the teacher's embedding holds). ``P`` belongs to this loss, not to the
    encoder: no export ever sees it. Its sizes come from the constructor, or from the stage through
    :meth:`build_projection` before the optimizer is built (a lazily built layer would miss the optimizer).

    Inputs: ``anchor (B, Hs)`` student embeddings, ``labels (B, Ht)`` the teacher's embeddings of the same texts.

    Args:
        student_dim: ``Hs``; with ``teacher_dim``, builds the projection now (``None``: the stage sets it).
        teacher_dim: ``Ht``.
        projection: ``"learned"`` or ``"fixed"``, used only when the sizes differ.
        seed: seed of the fixed projection and of the learned one's initial weights.
    """

    def __init__(
        self,
        student_dim: int | None = None,
        teacher_dim: int | None = None,
        projection: Projection = "learned",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if projection not in ("learned", "fixed"):
            raise ValueError(f"projection must be 'learned' or 'fixed', got {projection!r}")
        if (student_dim is None) != (teacher_dim is None):
            raise ValueError("give both student_dim and teacher_dim, or neither (the stage then sets them)")
        self.projection_kind = projection
        self.seed = seed
        self.projection: nn.Linear | None = None
        self._sizes: tuple[int, int] | None = None
        if student_dim is not None and teacher_dim is not None:
            self.build_projection(student_dim, teacher_dim)

    def build_projection(self, student_dim: int, teacher_dim: int) -> None:
        """Fix the sizes (and build the projection when they differ); calling again with the same sizes does
        nothing, other sizes are an error."""
        if student_dim <= 0 or teacher_dim <= 0:
            raise ValueError(f"embedding sizes must be > 0, got student {student_dim}, teacher {teacher_dim}")
        if self._sizes is not None:
            if self._sizes != (student_dim, teacher_dim):
                raise ValueError(
                    f"EmbeddingMSELoss was built for student {self._sizes[0]} -> teacher {self._sizes[1]} dims, "
                    f"not {student_dim} -> {teacher_dim}"
                )
            return
        self._sizes = (student_dim, teacher_dim)
        if student_dim == teacher_dim:
            return
        with torch.random.fork_rng(devices=[]):  # the learned layer starts the same whatever ran before
            torch.manual_seed(self.seed)
            layer = nn.Linear(student_dim, teacher_dim, bias=self.projection_kind == "learned")
        if self.projection_kind == "fixed":
            with torch.no_grad():
                layer.weight.copy_(_fixed_projection(student_dim, teacher_dim, self.seed))
            layer.weight.requires_grad_(False)
        self.projection = layer

    def forward(
        self,
        anchor: Tensor,
        positive: Tensor | None = None,
        negative: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        anchor_ids: Tensor | None = None,
        positive_ids: Tensor | None = None,
        negative_ids: Tensor | None = None,
    ) -> Tensor:
        """Compute the loss: ``anchor (B, Hs)`` student embeddings, ``labels (B, Ht)`` teacher embeddings. Scalar."""
        if positive is not None or negative is not None:
            raise ValueError(
                "EmbeddingMSELoss compares each text's student and teacher embeddings: pass every text as `anchor` "
                "(B, Hs) and the teacher's embeddings as `labels` (B, Ht)"
            )
        if anchor.dim() != 2:
            raise ValueError(f"anchor must have shape (B, H), got {tuple(anchor.shape)}")
        if labels is None or labels.dim() != 2 or labels.shape[0] != anchor.shape[0]:
            got = None if labels is None else tuple(labels.shape)
            raise ValueError(
                f"EmbeddingMSELoss needs the teacher's embeddings as labels (B={anchor.shape[0]}, Ht), got {got}"
            )
        student = to_float(anchor)  # (B, Hs)
        if self.projection is not None:
            student = to_float(self.projection(student.to(self.projection.weight.dtype)))  # (B, Hs) -> (B, Ht)
        if student.shape != labels.shape:
            raise ValueError(
                f"student embeddings {tuple(anchor.shape)} and teacher embeddings {tuple(labels.shape)} differ in "
                "size and the loss has no projection: give EmbeddingMSELoss student_dim and teacher_dim (or let "
                "the distillation stage set them)"
            )
        return F.mse_loss(student, to_float(labels).detach())


Similarity = Literal["dot", "cosine"]


class MarginMSELoss(EmbeddingLoss):
    """Margin-MSE ("Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation",
    Sebastian Hofstätter, Sophia Althammer, Michael Schröder, Mete Sertkan and Allan Hanbury, 2020);
    sentence-transformers' ``MarginMSELoss``::

        loss = mean_{i, n} ((s(q_i, p_i) − s(q_i, n_in)) − m_in)²

    for (query, positive, negative) triplets, with ``m_in`` the teacher's margin for the same triplet and ``s`` the
    dot product (the paper's, and sentence-transformers' default) or the cosine. The student matches the teacher's
    score gaps, not its scores, so it may keep its own score scale. :meth:`margins` computes the margins of any
    embeddings; the distillation stage uses it on the teacher's cached embeddings to get ``m``.

    Inputs: ``anchor (B, H)``, ``positive (B, H)``, ``negative (B, H)`` or ``(B, N, H)``, ``labels (B,)`` or
    ``(B, N)`` the teacher's margins, or ``(B, 1 + N)`` the teacher's scores of the positive then each negative.

    Args:
        similarity: ``"dot"`` or ``"cosine"``.
    """

    def __init__(self, similarity: Similarity = "dot") -> None:
        super().__init__()
        if similarity not in ("dot", "cosine"):
            raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
        self.similarity = similarity

    def margins(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        """``s(q, p) − s(q, n)`` for each negative: ``(B, N)`` (``negative`` ``(B, H)`` or ``(B, N, H)``)."""
        negative = check_embeddings(anchor, positive, negative)  # (B, N, H)
        q, p, n = to_float(anchor), to_float(positive), to_float(negative)
        if self.similarity == "cosine":
            q, p, n = F.normalize(q, dim=-1), F.normalize(p, dim=-1), F.normalize(n, dim=-1)
        positive_scores = (q * p).sum(-1)  # (B,)
        negative_scores = torch.einsum("bh,bnh->bn", q, n)  # (B, N)
        return positive_scores.unsqueeze(1) - negative_scores  # (B, N)

    def forward(
        self,
        anchor: Tensor,
        positive: Tensor | None = None,
        negative: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        anchor_ids: Tensor | None = None,
        positive_ids: Tensor | None = None,
        negative_ids: Tensor | None = None,
    ) -> Tensor:
        """Compute the loss from student embeddings and the teacher's margins (shapes in the class docstring)."""
        if positive is None or negative is None:
            raise ValueError("MarginMSELoss needs (anchor, positive, negative) triplets")
        margins = self.margins(anchor, positive, negative)  # (B, N)
        batch, negatives = margins.shape
        if labels is None:
            raise ValueError("MarginMSELoss needs the teacher's margins as labels: (B,) or (B, N)")
        target = to_float(labels).detach()
        if target.shape == (batch, negatives + 1):  # the teacher's scores: positive first, then each negative
            target = target[:, :1] - target[:, 1:]  # (B, N)
        elif target.shape == (batch,):
            target = target.unsqueeze(1)  # (B, 1)
        if target.shape != (batch, negatives):
            raise ValueError(
                f"MarginMSELoss labels must be the teacher's margins (B,) or (B, N) = ({batch}, {negatives}), or its "
                f"scores (B, 1 + N); got {tuple(labels.shape)}"
            )
        return F.mse_loss(margins, target)
