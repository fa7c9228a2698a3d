"""Global motion aggregation (GMA) with DRFA's confidence-biased attention.

GMA (Jiang et al. 2021) lets every 1/8-resolution cell borrow motion features from
cells that look alike: attention weights come from the *context* features of frame 1
(appearance), the values are the *motion* features of the current iteration. The
attention matrix depends only on frame 1, so it is computed once per image pair and
reused by every GRU iteration.

DRFA (D2-VR Sec. 2.2) adds a confidence map C = sigmoid(Phi(f_ctx)) (Eq. 1) and the
key-side bias M_j = log(C_j + eps) to the logits (Eq. 2):

    S_ij = Q_i K_j^T / sqrt(d) + Pos(i, j) + M_j,     A_i. = softmax_j(S_i.)

so a key with C_j -> 0 is multiplied by ~eps inside every query's softmax: corrupted
regions stop spreading their motion. A constant C adds the same number to every logit of
a row and cancels, which makes DRFA with a flat confidence map exactly GMA.

Position term. GMA's code offers content-only (its default), position-only and
"position and content" (relative embeddings dotted with the query). Eq. 2 writes
Pos(i, j) as its own additive logit term, so here it is a learned 2-D relative position
bias (as Swin/T5): one scalar per head per offset (dy, dx) = key - query in 1/8 cells,
offsets clipped to +-`max_relative_distance` so any image size works. The table starts
at zero, i.e. an untrained model is content-only like GMA's default.
"""
from __future__ import annotations

import torch
from torch import nn


class ConfidenceHead(nn.Module):
    """Phi of Eq. 1: (B, Cctx, h, w) context features -> C in (0, 1), (B, 1, h, w)."""

    def __init__(self, context_dim: int, hidden_dim: int, init_logit: float = 2.0):
        super().__init__()
        self.conv1 = nn.Conv2d(context_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 1, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        # start near "everything reliable" with a small spread: small weights, positive bias
        nn.init.normal_(self.conv2.weight, std=1e-3)
        nn.init.constant_(self.conv2.bias, init_logit)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv2(self.relu(self.conv1(ctx))))


class RelativePositionBias(nn.Module):
    """Learned Pos(i, j) = T[head, dy_ij, dx_ij]; (h, w) -> (heads, h*w, h*w)."""

    def __init__(self, heads: int, max_distance: int):
        super().__init__()
        self.max_distance = max_distance
        size = 2 * max_distance + 1
        self.table = nn.Parameter(torch.zeros(heads, size, size))  # [head, dy + R, dx + R]

    def forward(self, h: int, w: int) -> torch.Tensor:
        r, dev = self.max_distance, self.table.device
        ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
        iy = (ys[None, :] - ys[:, None]).clamp(-r, r) + r       # (h_query, h_key): key - query
        ix = (xs[None, :] - xs[:, None]).clamp(-r, r) + r       # (w_query, w_key)
        bias = self.table[:, iy][..., ix]                       # (heads, hq, hk, wq, wk)
        return bias.permute(0, 1, 3, 2, 4).reshape(-1, h * w, h * w)  # (heads, hq*wq, hk*wk)


class GlobalAttention(nn.Module):
    """Attention over frame-1 context features (GMA), optionally confidence-biased (DRFA).

    forward(ctx (B, Cctx, h, w), confidence (B, 1, h, w) or None) -> A (B, heads, hw, hw),
    rows summing to 1 over keys.
    """

    def __init__(self, context_dim: int, heads: int, head_dim: int, position_bias: bool,
                 max_distance: int, eps: float):
        super().__init__()
        self.heads, self.head_dim, self.eps = heads, head_dim, eps
        self.to_qk = nn.Conv2d(context_dim, 2 * heads * head_dim, 1, bias=False)
        self.pos = RelativePositionBias(heads, max_distance) if position_bias else None

    def logits(self, ctx: torch.Tensor, confidence: torch.Tensor | None = None) -> torch.Tensor:
        """S of Eq. 2, (B, heads, hw, hw)."""
        b, _, h, w = ctx.shape
        q, k = self.to_qk(ctx).reshape(b, 2, self.heads, self.head_dim, h * w).unbind(1)  # (B, H, d, hw)
        s = torch.einsum("bhdi,bhdj->bhij", q, k) * self.head_dim**-0.5
        if self.pos is not None:
            s = s + self.pos(h, w).unsqueeze(0)
        if confidence is not None:
            if confidence.shape != (b, 1, h, w):
                raise ValueError(f"confidence must be {(b, 1, h, w)}, got {tuple(confidence.shape)}")
            s = s + torch.log(confidence + self.eps).reshape(b, 1, 1, h * w)  # M_j, same for all queries i
        return s

    def forward(self, ctx: torch.Tensor, confidence: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(ctx, confidence).softmax(dim=-1)


class MotionAggregator(nn.Module):
    """Global motion feature: motion + gamma * proj(A @ V(motion)), gamma learned from 0.

    forward(A (B, heads, hw, hw), motion (B, Cm, h, w)) -> (B, Cm, h, w).
    """

    def __init__(self, motion_dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.to_v = nn.Conv2d(motion_dim, heads * head_dim, 1, bias=False)
        inner = heads * head_dim
        self.proj = nn.Identity() if inner == motion_dim else nn.Conv2d(inner, motion_dim, 1)
        self.gamma = nn.Parameter(torch.zeros(1))  # starts as plain RAFT features (GMA)

    def forward(self, attn: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        b, _, h, w = motion.shape
        v = self.to_v(motion).reshape(b, self.heads, self.head_dim, h * w)     # (B, H, d, hw)
        out = torch.einsum("bhij,bhdj->bhdi", attn, v).reshape(b, -1, h, w)    # (B, H*d, h, w)
        return motion + self.gamma * self.proj(out)
