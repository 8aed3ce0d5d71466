"""GISTEmbedLoss: a guide's similarities mask in-batch false negatives; naive loop and sentence-transformers parity."""

import math

import pytest
import torch

from lightembed.losses import GISTEmbedLoss

B, H, G = 6, 8, 5


def _emb(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


ANCHOR, POSITIVE, NEGATIVE = _emb(0, B, H), _emb(1, B, H), _emb(2, B, H)
GUIDE_A, GUIDE_P, GUIDE_N = _emb(3, B, G), _emb(4, B, G), _emb(5, B, G)
# near-copies, never exact ones (an exact copy ties with the own pair's guide score, decided by float rounding):
GUIDE_P[3] = GUIDE_A[1] * 1.5 + 0.01 * _emb(6, G)  # the guide calls positive 3 a paraphrase of anchor 1
GUIDE_A[4] = GUIDE_A[2] + 0.01 * _emb(7, G)  # and anchor 4 one of anchor 2


def _cos(u, v):
    return float(u @ v / (u.norm() * v.norm()))


def _naive(temperature, margin, strategy, negative, guide_negative, contrast_anchors=True, contrast_positives=True):
    total = 0.0
    for i in range(B):
        g_own = _cos(GUIDE_A[i], GUIDE_P[i])
        threshold = g_own - margin if strategy == "absolute" else g_own - abs(g_own) * margin
        blocks = [(ANCHOR[i], POSITIVE, GUIDE_A[i], GUIDE_P, True)]
        if contrast_anchors:
            blocks.append((ANCHOR[i], ANCHOR, GUIDE_A[i], GUIDE_A, False))
        if contrast_positives:
            blocks.append((POSITIVE[i], POSITIVE, GUIDE_P[i], GUIDE_P, False))
        if negative is not None:
            blocks.append((ANCHOR[i], negative, GUIDE_A[i], guide_negative, False))
        logits = []
        for left, rights, guide_left, guide_rights, first in blocks:
            for c in range(len(rights)):
                if (first and c == i) or _cos(guide_left, guide_rights[c]) <= threshold:
                    logits.append(_cos(left, rights[c]) / temperature)
        own = _cos(ANCHOR[i], POSITIVE[i]) / temperature
        top = max(logits)
        total -= own - (top + math.log(sum(math.exp(x - top) for x in logits)))
    return total / B


@pytest.mark.parametrize(
    ("strategy", "margin", "with_negative", "contrast"),
    [("absolute", 0.0, False, True), ("relative", 0.1, True, True), ("absolute", 0.05, True, False)],
)
def test_matches_loop(strategy, margin, with_negative, contrast):
    loss = GISTEmbedLoss(0.05, strategy, margin, contrast_anchors=contrast, contrast_positives=contrast)
    negative, guide_negative = (NEGATIVE, GUIDE_N) if with_negative else (None, None)
    got = loss(ANCHOR, POSITIVE, negative, guide_anchor=GUIDE_A, guide_positive=GUIDE_P, guide_negative=guide_negative)
    want = _naive(0.05, margin, strategy, negative, guide_negative, contrast, contrast)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_the_guide_masks_false_negatives():
    """With the guide's view of anchor 1 equal to the student's, masking changes the loss; a guide far from every
    pair masks nothing, and the loss is then plain InfoNCE over the same candidates."""
    kwargs = {"guide_anchor": GUIDE_A, "guide_positive": GUIDE_P}
    masked = GISTEmbedLoss(0.05, contrast_anchors=False, contrast_positives=False)(ANCHOR, POSITIVE, **kwargs)
    orthogonal_guide = {
        "guide_anchor": torch.eye(B),
        "guide_positive": torch.eye(B),
    }  # g_ii = 1, others 0: nothing masked
    plain = GISTEmbedLoss(0.05, contrast_anchors=False, contrast_positives=False)(ANCHOR, POSITIVE, **orthogonal_guide)
    logits = torch.nn.functional.normalize(ANCHOR, dim=-1) @ torch.nn.functional.normalize(POSITIVE, dim=-1).T / 0.05
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(logits, torch.arange(B)))
    assert not torch.isclose(masked, plain)


def test_guide_embeddings_are_required_and_checked():
    with pytest.raises(ValueError, match="GISTEmbedLoss needs guide_anchor and guide_positive"):
        GISTEmbedLoss()(ANCHOR, POSITIVE)
    with pytest.raises(ValueError, match="must cover the same texts"):
        GISTEmbedLoss()(ANCHOR, POSITIVE, NEGATIVE, guide_anchor=GUIDE_A, guide_positive=GUIDE_P)
    with pytest.raises(ValueError, match="margin_strategy must be one of absolute, relative, got 'both'"):
        GISTEmbedLoss(margin_strategy="both")


@pytest.mark.parametrize(("strategy", "margin", "with_negative"), [("absolute", 0.0, False), ("relative", 0.1, True)])
def test_matches_sentence_transformers(monkeypatch, tokenizer, strategy, margin, with_negative):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.losses import gist_embed

    class Stub(torch.nn.Module):  # their loss takes models; these hand back fixed embeddings per column
        def __init__(self, columns):
            super().__init__()
            self.columns, self.tokenizer, self.max_seq_length = columns, tokenizer, 32

    student = Stub([ANCHOR, POSITIVE] + ([NEGATIVE] if with_negative else []))
    guide = Stub([GUIDE_A, GUIDE_P] + ([GUIDE_N] if with_negative else []))
    monkeypatch.setattr(gist_embed, "embed_columns", lambda model, features: list(model.columns))
    theirs = gist_embed.GISTEmbedLoss(student, guide, temperature=0.05, margin_strategy=strategy, margin=margin)
    want = theirs([{}] * len(student.columns), None)
    got = GISTEmbedLoss(0.05, strategy, margin)(
        *student.columns,
        guide_anchor=GUIDE_A,
        guide_positive=GUIDE_P,
        guide_negative=GUIDE_N if with_negative else None,
    )
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
