"""The three terms of the paper's objective (Eq. 6) and their total.

L = L_distill + lambda1 * L_adv^G + lambda2 * L_T-LPIPS, lambda1 = 0.05, lambda2 = 0.1.

Distillation (score distillation, ADD form). The student's x0 is re-noised to a random
teacher timestep tau; the frozen teacher predicts x0 from it (no grad); the loss is
c(tau) * ||x0_student - sg(x0_teacher)||^2. Weighting:
- "alpha_bar" (default): c(tau) = alpha_bar_tau, ADD's choice: low-noise teacher timesteps,
  whose targets carry detail, weigh most; high-noise targets (blurry means) weigh little.
- "sds": c(tau) = alpha_bar_tau * sqrt(1 - alpha_bar_tau). With the teacher's
  eps-prediction, the SDS gradient w(tau) (eps_hat - eps) d x_tau / d x0 with DreamFusion's
  w = 1 - alpha_bar equals (up to a factor 2) the gradient of this weighted MSE against the
  stop-grad teacher x0, since eps_hat - eps = sqrt(ab)/sqrt(1-ab) (x0_student - x0_teacher).
Both are written as an MSE against a detached target, so the loss is exactly 0 when the
student already produces the teacher's target, and its gradient pulls towards the target.

Adversarial (Eq. 3-4). D outputs "realness" logits (one map per feature level; the loss
averages each level, then the levels). Forms:
- "hinge" (default): L_D = E[relu(1 - D(real))] + E[relu(1 + D(fake))], L_G = -E[D(fake)].
  ADD's choice. Its generator loss is exactly the paper's Eq. 3 (with the paper's D, a
  "fakeness" score, being -D here), while the discriminator loss is bounded: D stops
  pushing logits once they pass the margin, so it cannot run away.
- "paper": Eq. 3-4 literally, with D_paper = -D: L_G = E[D_paper(fake)] = -E[D(fake)],
  L_D = E[1 - D_paper(fake)] + E[D_paper(real)] = 1 + E[D(fake)] - E[D(real)]. This is a
  Wasserstein critic loss without any Lipschitz constraint (no gradient penalty, no
  clipping): the logits can grow without bound; kept for ablations.
- "non_saturating": L_D = E[softplus(-D(real))] + E[softplus(D(fake))],
  L_G = E[softplus(-D(fake))] (the classic GAN losses).

Temporal-LPIPS (Eq. 5) on decoded RGB frames: for each LPIPS layer l, the unit-normalised
features phi_l; d_l = (phi_l(I^t) - phi_l(I^{t-1})) - (phi_l(GT^t) - phi_l(GT^{t-1}));
LPIPS's own linear heads weigh d_l^2 per channel, averaged over space, summed over layers
and over t = 1..T-1 (Eq. 5's sum), averaged over the batch. It is 0 when the restored
frames change exactly as the ground truth does (e.g. both static), and grows with flicker.
The backbone: `backbone="pretrained"` (production) is torchvision's ImageNet AlexNet/VGG,
read from the local torch hub cache only (an error names the missing file; no download);
`backbone="random"` (tests, offline) is a RANDOM backbone with the real linear heads that
ship in the lpips package: a valid differentiable loss of the same form, not perceptual.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

ADVERSARIAL_FORMS = ("hinge", "non_saturating", "paper")
DISTILL_WEIGHTINGS = ("alpha_bar", "sds")


# --------------------------------------------------------------------------- distillation


def distillation_weight(alpha_bar: torch.Tensor, weighting: str = "alpha_bar") -> torch.Tensor:
    """c(tau) per sample from alpha_bar_tau (B,)."""
    if weighting == "alpha_bar":
        return alpha_bar
    if weighting == "sds":
        return alpha_bar * (1 - alpha_bar).sqrt()
    raise ValueError(f"distillation weighting must be one of {DISTILL_WEIGHTINGS}, got {weighting!r}")


def distillation_loss(student_x0: torch.Tensor, teacher_x0: torch.Tensor, alpha_bar: torch.Tensor,
                      weighting: str = "alpha_bar") -> torch.Tensor:
    """mean_b c(tau_b) * mean ||student_x0_b - sg(teacher_x0_b)||^2.

    student_x0, teacher_x0: (B, C, h, w) latents; alpha_bar: (B,) at the teacher timesteps.
    The teacher target is detached here whatever the caller did.
    """
    if student_x0.shape != teacher_x0.shape:
        raise ValueError(f"student {tuple(student_x0.shape)} and teacher {tuple(teacher_x0.shape)} differ")
    if alpha_bar.shape != student_x0.shape[:1]:
        raise ValueError(f"alpha_bar must be ({student_x0.shape[0]},), got {tuple(alpha_bar.shape)}")
    per_sample = (student_x0.float() - teacher_x0.detach().float()).pow(2).flatten(1).mean(1)
    return (distillation_weight(alpha_bar.float(), weighting) * per_sample).mean()


# --------------------------------------------------------------------------- adversarial


def _levels(logits) -> list[torch.Tensor]:
    return list(logits) if isinstance(logits, (list, tuple)) else [logits]


def _average(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([v.float().mean() for v in values]).mean()


def generator_adversarial_loss(fake_logits, form: str = "hinge") -> torch.Tensor:
    """L_adv^G (Eq. 3) from D's realness logits on the student's re-noised samples."""
    fake = _levels(fake_logits)
    if form in ("hinge", "paper"):
        return _average([-f for f in fake])
    if form == "non_saturating":
        return _average([F.softplus(-f) for f in fake])
    raise ValueError(f"adversarial form must be one of {ADVERSARIAL_FORMS}, got {form!r}")


def discriminator_adversarial_loss(real_logits, fake_logits, form: str = "hinge") -> torch.Tensor:
    """L_adv^D (Eq. 4) from D's realness logits on forward-diffused real and fake latents."""
    real, fake = _levels(real_logits), _levels(fake_logits)
    if len(real) != len(fake):
        raise ValueError(f"{len(real)} real vs {len(fake)} fake logit levels")
    if form == "hinge":
        return _average([F.relu(1 - r) for r in real]) + _average([F.relu(1 + f) for f in fake])
    if form == "non_saturating":
        return _average([F.softplus(-r) for r in real]) + _average([F.softplus(f) for f in fake])
    if form == "paper":
        return 1 + _average(fake) - _average(real)
    raise ValueError(f"adversarial form must be one of {ADVERSARIAL_FORMS}, got {form!r}")


# --------------------------------------------------------------------------- T-LPIPS


def _hub_checkpoint(net: str) -> str:
    import torchvision

    weights = {"alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
               "vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1}[net]
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


class TemporalLPIPS(nn.Module):
    """Eq. 5 on (B, T, 3, H, W) clips in [0, 1]; frozen, gradients reach the restored frames.

    backbone: "pretrained" (ImageNet trunk from the local torch hub cache) or "random"
    (RANDOM trunk, offline; for tests only). The linear heads are LPIPS v0.1's either way.
    """

    def __init__(self, net: str = "alex", backbone: str = "pretrained"):
        super().__init__()
        import lpips

        if net not in ("alex", "vgg"):
            raise ValueError(f"T-LPIPS net must be 'alex' or 'vgg', got {net!r}")
        if backbone not in ("pretrained", "random"):
            raise ValueError(f"T-LPIPS backbone must be 'pretrained' or 'random', got {backbone!r}")
        if backbone == "pretrained":
            path = _hub_checkpoint(net)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"T-LPIPS: the {net} ImageNet weights are not in the torch hub "
                                        f"cache ({path}); copy them there (TORCH_HOME) or use backbone='random'")
        self.backbone = backbone
        self.lpips = lpips.LPIPS(net=net, pretrained=True, pnet_rand=backbone == "random", verbose=False)
        self.lpips.requires_grad_(False)
        self.lpips.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.lpips.eval()               # dropout in the linear heads stays off
        return self

    def features(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) in [0, 1] -> unit-normalised features per layer."""
        from lpips import normalize_tensor

        m = self.lpips
        x = m.scaling_layer(frames.float() * 2 - 1)
        return [normalize_tensor(f) for f in m.net.forward(x)]

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if restored.dim() != 5 or restored.shape != target.shape or restored.shape[2] != 3:
            raise ValueError(f"T-LPIPS needs restored and target (B, T, 3, H, W) of one shape, got "
                             f"{tuple(restored.shape)} and {tuple(target.shape)}")
        b, t = restored.shape[:2]
        if t < 2:
            raise ValueError(f"T-LPIPS needs at least 2 frames, got T={t}")
        feats = self.features(restored.flatten(0, 1))
        with torch.no_grad():
            feats_gt = self.features(target.flatten(0, 1).to(restored.device))
        total = restored.new_zeros(b, dtype=torch.float32)
        for lin, f, g in zip(self.lpips.lins, feats, feats_gt):
            f = f.unflatten(0, (b, t))
            g = g.unflatten(0, (b, t))
            d = (f[:, 1:] - f[:, :-1]) - (g[:, 1:] - g[:, :-1])          # (B, T-1, C, h, w)
            per = lin(d.pow(2).flatten(0, 1)).mean(dim=(1, 2, 3))          # (B*(T-1),)
            total = total + per.unflatten(0, (b, t - 1)).sum(1)
        return total.mean()


# --------------------------------------------------------------------------- total


@dataclasses.dataclass(frozen=True)
class LossWeights:
    distill: float = 1.0            # weight of L_distill (Eq. 6 has 1)
    adversarial: float = 0.05       # lambda1 (paper, Sec. 3.1)
    tlpips: float = 0.1             # lambda2 (paper, Sec. 3.1)


def total_loss(distill: torch.Tensor, adversarial: torch.Tensor, tlpips: torch.Tensor,
               weights: LossWeights = LossWeights()) -> torch.Tensor:
    """Eq. 6: L_distill + lambda1 L_adv^G + lambda2 L_T-LPIPS."""
    return weights.distill * distill + weights.adversarial * adversarial + weights.tlpips * tlpips
