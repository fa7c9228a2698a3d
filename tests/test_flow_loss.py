"""RAFT's sequence loss and flow metrics."""
from __future__ import annotations

import math

import pytest
import torch

from models.flow import flow_metrics, sequence_loss


def _gt(seed=0):
    torch.manual_seed(seed)
    return torch.randn(2, 2, 8, 10) * 3


def test_perfect_prediction_gives_zero_loss_and_perfect_metrics():
    gt = _gt()
    loss, m = sequence_loss([gt.clone() for _ in range(4)], gt)
    assert loss.item() == 0.0
    assert m == {"epe": 0.0, "1px": 1.0, "3px": 1.0, "5px": 1.0}


def test_later_iterations_weigh_more():
    gt, n, gamma = _gt(), 5, 0.8
    err = gt + 1.0

    def loss_with_error_at(i):
        flows = [gt.clone() for _ in range(n)]
        flows[i] = err
        return sequence_loss(flows, gt, gamma=gamma)[0].item()

    losses = [loss_with_error_at(i) for i in range(n)]
    assert losses == sorted(losses) and losses[0] < losses[-1]
    assert math.isclose(losses[-1], 1.0, rel_tol=1e-6)                  # weight 1 on the last, L1 = 1
    assert math.isclose(losses[0] / losses[-1], gamma ** (n - 1), rel_tol=1e-5)


def test_invalid_and_huge_flow_pixels_are_ignored():
    gt = _gt()
    valid = torch.ones(2, 8, 10)
    valid[0, :3] = 0
    gt[1, :, 5, 5] = 1000.0                                             # above max_flow: excluded
    gt[0, :, 0, 0] = float("nan")                                       # garbage where invalid
    preds = [gt.nan_to_num(0) + 0.5 for _ in range(3)]
    loss, m = sequence_loss(preds, gt, valid)
    changed = [p.clone() for p in preds]
    for p in changed:
        p[0, :, :3] += 50.0                                             # junk in the invalid rows
        p[1, :, 5, 5] -= 77.0                                           # and at the huge-flow pixel
    loss2, m2 = sequence_loss(changed, gt, valid)
    assert torch.isfinite(loss) and loss.item() == loss2.item() and m == m2
    changed[-1][0, :, 5] += 50.0                                        # a valid pixel does count
    assert sequence_loss(changed, gt, valid)[0].item() > loss.item()
    preds[-1].requires_grad_(True)
    sequence_loss(preds, gt, valid)[0].backward()
    assert torch.isfinite(preds[-1].grad).all() and (preds[-1].grad[0, :, :3] == 0).all()


def test_accuracy_is_fraction_of_valid_pixels_below_threshold():
    gt = torch.zeros(1, 2, 1, 4)
    pred = torch.tensor([0.5, 2.0, 4.0, 10.0]).view(1, 1, 1, 4) * torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    m = flow_metrics(pred, gt)
    assert m["epe"] == pytest.approx(16.5 / 4)
    assert (m["1px"], m["3px"], m["5px"]) == (0.25, 0.5, 0.75)
    m = flow_metrics(pred, gt, valid=torch.tensor([[[1.0, 1.0, 0.0, 0.0]]]))
    assert (m["epe"], m["1px"], m["3px"], m["5px"]) == (1.25, 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="valid"):
        flow_metrics(pred, gt, valid=torch.ones(1, 2, 4))
