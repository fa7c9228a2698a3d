"""RAFT's sequence loss and the standard flow metrics.

loss = sum_i gamma^(N-1-i) * mean_pixels(valid * |f_i - f_gt|_1)     (RAFT Eq. 7)

As in RAFT the mean runs over all pixels (invalid ones contribute 0), so the loss scale
follows the valid fraction; the 2 flow channels are averaged too. Pixels are valid where
`valid >= 0.5` and |f_gt| < `max_flow` (very large ground-truth motions are excluded).
Metrics are on the last prediction: EPE (mean end-point error over valid pixels) and
the "Npx" accuracies = fraction of valid pixels with EPE < N.
"""
from __future__ import annotations

import torch


def _valid_mask(flow_gt: torch.Tensor, valid: torch.Tensor | None, max_flow: float) -> torch.Tensor:
    """(B, 1, H, W) bool."""
    if flow_gt.ndim != 4 or flow_gt.shape[1] != 2:
        raise ValueError(f"flow_gt must be (B, 2, H, W), got {tuple(flow_gt.shape)}")
    finite = torch.isfinite(flow_gt).all(dim=1, keepdim=True)
    mag = torch.where(finite, flow_gt, 0).pow(2).sum(dim=1, keepdim=True).sqrt()
    mask = finite & (mag < max_flow)
    if valid is not None:
        if valid.ndim == 3:
            valid = valid.unsqueeze(1)
        if valid.shape != mask.shape:
            raise ValueError(f"valid must be (B, H, W) or (B, 1, H, W) matching flow_gt, got {tuple(valid.shape)}")
        mask = mask & (valid >= 0.5)
    return mask


def flow_metrics(flow: torch.Tensor, flow_gt: torch.Tensor, valid: torch.Tensor | None = None,
                 max_flow: float = 400.0) -> dict[str, float]:
    """{'epe', '1px', '3px', '5px'} of `flow` (B, 2, H, W) against `flow_gt` on valid pixels."""
    if flow.shape != flow_gt.shape:
        raise ValueError(f"flow {tuple(flow.shape)} and flow_gt {tuple(flow_gt.shape)} differ")
    mask = _valid_mask(flow_gt, valid, max_flow)
    with torch.no_grad():
        epe = (flow.detach().float() - flow_gt.float()).pow(2).sum(dim=1, keepdim=True).sqrt()[mask]
        if epe.numel() == 0:
            return {"epe": float("nan"), "1px": float("nan"), "3px": float("nan"), "5px": float("nan")}
        return {"epe": epe.mean().item(), "1px": (epe < 1).float().mean().item(),
                "3px": (epe < 3).float().mean().item(), "5px": (epe < 5).float().mean().item()}


def sequence_loss(flows: list[torch.Tensor], flow_gt: torch.Tensor, valid: torch.Tensor | None = None,
                  gamma: float = 0.8, max_flow: float = 400.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Exponentially weighted L1 over iterations; returns (loss, metrics of the last flow)."""
    if not flows:
        raise ValueError("sequence_loss: flows is empty")
    mask = _valid_mask(flow_gt, valid, max_flow)
    gt = torch.where(mask, flow_gt, 0)  # keeps NaN/inf at invalid pixels out of the gradient
    n = len(flows)
    loss = flows[0].new_zeros(())
    for i, pred in enumerate(flows):
        if pred.shape != flow_gt.shape:
            raise ValueError(f"sequence_loss: flows[{i}] {tuple(pred.shape)} vs flow_gt {tuple(flow_gt.shape)}")
        err = torch.where(mask, (pred - gt).abs(), 0)
        loss = loss + gamma ** (n - 1 - i) * err.mean()
    return loss, flow_metrics(flows[-1], flow_gt, valid, max_flow)
