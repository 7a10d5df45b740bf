"""The candidate losses of models.base: binary cross-entropy and sampled softmax."""

from __future__ import annotations

import pytest
import torch

from mdgr_graph.models.base import (
    CANDIDATE_LOSSES,
    SequentialRecommender,
    candidate_loss,
    sampled_softmax_loss,
)


def reference_sampled_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One cross-entropy per positive, over that positive and its row's negatives."""
    terms = []
    for row, lab in zip(logits, labels.bool(), strict=True):
        for p in lab.nonzero().flatten():
            scores = torch.cat([row[p].view(1), row[~lab]])
            terms.append(torch.nn.functional.cross_entropy(scores.view(1, -1),
                                                           torch.zeros(1, dtype=torch.long)))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("positives", [1, 3])
def test_sampled_softmax_matches_one_cross_entropy_per_positive(positives):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 9, generator=gen, requires_grad=True)
    labels = torch.zeros(5, 9)
    labels[:, :positives] = 1
    labels[2] = labels[2].flip(0)  # positives need not come first
    loss = sampled_softmax_loss(logits, labels)
    assert torch.allclose(loss, reference_sampled_softmax(logits, labels), atol=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_sampled_softmax_ignores_a_shift_of_a_row_and_bce_does_not():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, generator=gen)
    labels = (torch.arange(6) < 2).float().expand(4, 6)
    shift = torch.randn(4, 1, generator=gen) * 5
    assert torch.allclose(sampled_softmax_loss(logits + shift, labels),
                          sampled_softmax_loss(logits, labels), atol=1e-5)
    assert not torch.allclose(candidate_loss(logits + shift, labels, "bce"),
                              candidate_loss(logits, labels, "bce"))


def test_edge_cases_and_errors():
    logits = torch.randn(2, 3, requires_grad=True)
    # a row without negatives: the positive is the whole softmax, loss 0
    assert sampled_softmax_loss(logits, torch.ones(2, 3)).item() == 0.0
    none = sampled_softmax_loss(logits, torch.zeros(2, 3))  # no positive: 0 with a graph
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match=r"must both be \[B, C\]"):
        sampled_softmax_loss(logits, torch.ones(2, 4))
    with pytest.raises(ValueError, match="unknown candidate loss 'hinge'"):
        candidate_loss(logits, torch.ones(2, 3), "hinge")
    assert CANDIDATE_LOSSES == ("bce", "sampled_softmax")
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    assert torch.allclose(candidate_loss(logits, labels),
                          torch.nn.functional.binary_cross_entropy_with_logits(logits, labels))


def test_candidate_loss_kind_is_checked_when_set():
    model = SequentialRecommender(5)
    assert model.candidate_loss_kind == "bce"
    model.candidate_loss_kind = "sampled_softmax"
    assert model.candidate_loss_kind == "sampled_softmax"
    with pytest.raises(ValueError, match="unknown candidate loss 'hinge'"):
        model.candidate_loss_kind = "hinge"
    assert model.candidate_loss_kind == "sampled_softmax"
    assert SequentialRecommender(5).candidate_loss_kind == "bce"  # per instance
