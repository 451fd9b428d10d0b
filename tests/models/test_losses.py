"""Ranking losses checked against values worked out by hand."""

import math

import pytest
import torch

from models.losses import HardNegativeSchedule, InfoNCE, MaxOfHinges, SumOfHinges, build_ranking_loss

# scores[i, j] = s(image i, caption j); positives on the diagonal.
SCORES = torch.tensor([[0.9, 0.8, 0.1],
                       [0.5, 0.6, 0.7],
                       [0.2, 0.3, 0.4]])


def test_sum_of_hinges_by_hand():
    # image->caption costs, margin 0.2: row 0: [0.2-0.9+0.8]=0.1, [0.2-0.9+0.1]=0 ; row 1: 0.1, 0.3 ;
    # row 2: 0.0, 0.1  -> 0.6.  caption->image: col 0: [0.2-0.9+0.5]=0, [0.2-0.9+0.2]=0 ;
    # col 1: 0.4, 0.0... [0.2-0.6+0.8]=0.4, [0.2-0.6+0.3]=0 ; col 2: [0.2-0.4+0.1]=0, [0.2-0.4+0.7]=0.5 -> 0.9
    assert SumOfHinges(0.2)(SCORES).item() == pytest.approx(1.5)


def test_max_of_hinges_by_hand():
    # hardest per image: 0.1, 0.3, 0.1 -> 0.5 ; hardest per caption: 0, 0.4, 0.5 -> 0.9
    assert MaxOfHinges(0.2)(SCORES).item() == pytest.approx(1.4)


def test_no_loss_when_positives_win_by_the_margin():
    scores = torch.eye(4) * 0.9
    assert SumOfHinges(0.2)(scores).item() == 0 and MaxOfHinges(0.2)(scores).item() == 0


def test_infonce_by_hand():
    # each row and column: softmax over (1/0.5, 0) -> loss = log(1 + e^-2) in both directions
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert InfoNCE(0.5)(scores).item() == pytest.approx(math.log1p(math.exp(-2)), rel=1e-6)


def test_hard_negative_schedule_moves_from_sum_to_max():
    schedule = HardNegativeSchedule(0.2, warmup_epochs=2, anneal_epochs=1)
    assert [schedule.max_weight(e) for e in range(4)] == [0.0, 0.0, 0.5, 1.0]
    assert schedule(SCORES, epoch=0).item() == pytest.approx(1.5 / 2)  # the sum, over B - 1 negatives
    assert schedule(SCORES, epoch=2).item() == pytest.approx(0.5 * 1.4 + 0.5 * 1.5 / 2)
    assert schedule(SCORES, epoch=3).item() == pytest.approx(1.4)
    # The progress line names what changed, so a loss on a new scale does not read as a failure.
    assert [schedule.describe(e) for e in (0, 2, 3)] == [
        "sum of hinges (warm-up)", "hardest negatives 50%, sum of hinges 50%", "hardest negatives"]


def test_build_ranking_loss_rejects_unknown_kind():
    assert isinstance(build_ranking_loss({"kind": "sum_hinge"}), SumOfHinges)
    with pytest.raises(ValueError, match="unknown loss 'triplet'"):
        build_ranking_loss({"kind": "triplet"})
