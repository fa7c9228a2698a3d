"""Each loss term: zero where it should be, right sign, right target.

T-LPIPS runs with a RANDOM AlexNet backbone (offline; the LPIPS linear heads are the real
ones shipped in the lpips package): it checks the loss's form, not perceptual quality.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.losses import (LossWeights, TemporalLPIPS, discriminator_adversarial_loss,
                           distillation_loss, distillation_weight, generator_adversarial_loss,
                           total_loss)


@pytest.fixture(scope="module")
def tlpips():
    torch.manual_seed(0)
    return TemporalLPIPS(net="alex", backbone="random")      # RANDOM backbone, real linear heads


def clip(b=1, t=3, h=64, w=64, seed=0, shift=3):
    """Panning smooth texture (B, T, 3, H, W) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    big = torch.rand(b, 3, h // 8 + 2, (w + t * shift) // 8 + 2, generator=g)
    tex = F.interpolate(big, size=(h, w + t * shift), mode="bicubic", align_corners=False).clamp(0, 1)
    return torch.stack([tex[..., i * shift:i * shift + w] for i in range(t)], dim=1)


# ---- distillation


def test_distillation_is_zero_at_the_target_and_pulls_towards_it():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(4, 4, 8, 8, generator=g)
    ab = torch.tensor([0.9, 0.5, 0.1, 0.02])
    for weighting in ("alpha_bar", "sds"):
        assert distillation_loss(target.clone(), target, ab, weighting) == 0
        x = torch.randn(4, 4, 8, 8, generator=g, requires_grad=True)
        start = (x - target).flatten(1).norm(dim=1)
        opt = torch.optim.SGD([x], lr=100.0)                      # the loss is a mean over 4*256 elements
        for _ in range(20):
            opt.zero_grad()
            distillation_loss(x, target, ab, weighting).backward()
            opt.step()
        end = (x - target).flatten(1).norm(dim=1)
        assert (end < start).all() and end.sum() < 0.8 * start.sum()   # every sample moved towards its target


def test_distillation_target_gets_no_gradient_and_weighting_is_adds():
    student = torch.zeros(2, 4, 4, 4, requires_grad=True)
    teacher = torch.ones(2, 4, 4, 4, requires_grad=True)
    ab = torch.tensor([1.0, 0.25])
    loss = distillation_loss(student, teacher, ab)
    loss.backward()
    assert teacher.grad is None and student.grad is not None
    assert loss.item() == pytest.approx((1.0 + 0.25) / 2)          # c(t) = alpha_bar, per-sample MSE 1
    assert torch.allclose(distillation_weight(ab, "sds"), ab * (1 - ab).sqrt())
    with pytest.raises(ValueError, match="weighting"):
        distillation_loss(student, teacher, ab, "snr")


# ---- adversarial


@pytest.mark.parametrize("form", ["hinge", "non_saturating", "paper"])
def test_adversarial_signs(form):
    real_good, fake_good = [torch.full((2, 1, 4, 4), 3.0)], [torch.full((2, 1, 4, 4), -3.0)]
    real_bad, fake_bad = [torch.full((2, 1, 4, 4), -3.0)], [torch.full((2, 1, 4, 4), 3.0)]
    # D's loss is lower when it calls real real and fake fake
    good = discriminator_adversarial_loss(real_good, fake_good, form)
    assert good < discriminator_adversarial_loss(real_bad, fake_bad, form)
    # G's loss is lower when D takes its samples for real
    assert generator_adversarial_loss(fake_bad, form) < generator_adversarial_loss(fake_good, form)


def test_adversarial_forms_match_their_formulas():
    r = [torch.tensor([0.5, 2.0]), torch.tensor([[-1.0]])]
    f = [torch.tensor([0.2, -3.0]), torch.tensor([[1.5]])]
    hinge_d = ((0.5 + 0.0) / 2 + 2.0) / 2 + ((1.2 + 0.0) / 2 + 2.5) / 2
    assert discriminator_adversarial_loss(r, f, "hinge").item() == pytest.approx(hinge_d)
    assert generator_adversarial_loss(f, "hinge").item() == pytest.approx(-((0.2 - 3.0) / 2 + 1.5) / 2)
    # the paper's Eq. 4 with D_paper = -D: 1 + E[D(fake)] - E[D(real)]; Eq. 3 = -E[D(fake)]
    paper_d = 1 + ((0.2 - 3.0) / 2 + 1.5) / 2 - ((0.5 + 2.0) / 2 - 1.0) / 2
    assert discriminator_adversarial_loss(r, f, "paper").item() == pytest.approx(paper_d)
    assert generator_adversarial_loss(f, "paper").item() == generator_adversarial_loss(f, "hinge").item()
    ns = (F.softplus(-torch.tensor([0.2, -3.0])).mean() + F.softplus(-torch.tensor(1.5))) / 2
    assert generator_adversarial_loss(f, "non_saturating").item() == pytest.approx(ns.item())
    with pytest.raises(ValueError, match="form"):
        generator_adversarial_loss(f, "wgan-gp")


def test_discriminator_loss_falls_when_a_critic_trains_on_fixed_samples():
    """A tiny conv critic on fixed real/fake latents: every form's D loss must fall."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(8, 4, 8, 8, generator=g) * 0.5 + 1.0
    fake = torch.randn(8, 4, 8, 8, generator=g) * 0.5 - 1.0
    for form in ("hinge", "non_saturating", "paper"):
        torch.manual_seed(0)
        d = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 1, 1))
        opt = torch.optim.Adam(d.parameters(), lr=1e-2)
        losses = []
        for _ in range(15):
            loss = discriminator_adversarial_loss([d(real)], [d(fake)], form)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0] - 0.2, (form, losses)


# ---- T-LPIPS


def test_tlpips_zero_when_changes_match_and_positive_for_flicker(tlpips):
    gt = clip(seed=0)
    assert tlpips(gt, gt).item() == 0
    static_gt = gt[:, :1].expand(-1, 3, -1, -1, -1).contiguous()
    static_restored = clip(seed=1)[:, :1].expand(-1, 3, -1, -1, -1).contiguous()
    # restored differs from the GT, but neither changes over time: no temporal error
    assert tlpips(static_restored, static_gt).item() == pytest.approx(0.0, abs=1e-12)
    flicker = static_restored.clone()
    flicker[:, 1] = (flicker[:, 1] + 0.15 * torch.randn_like(flicker[:, 1])).clamp(0, 1)
    assert tlpips(flicker, static_gt).item() > 1e-3
    # the moving GT against a frozen restoration also costs
    assert tlpips(static_restored, gt).item() > 1e-3


def test_tlpips_gradient_reduces_flicker(tlpips):
    gt = clip(t=2, seed=2)
    noisy = (gt + 0.1 * torch.randn_like(gt)).clamp(0, 1)
    x = noisy.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.01)
    start = tlpips(x, gt).item()
    for _ in range(6):
        opt.zero_grad()
        loss = tlpips(x, gt)
        loss.backward()
        opt.step()
    assert tlpips(x, gt).item() < 0.7 * start
    assert all(not p.requires_grad for p in tlpips.parameters())


def test_tlpips_is_eq5_summed_over_frame_pairs(tlpips):
    gt = clip(t=3, seed=3)
    restored = clip(t=3, seed=4)
    full = tlpips(restored, gt)
    pairs = tlpips(restored[:, :2], gt[:, :2]) + tlpips(restored[:, 1:], gt[:, 1:])
    assert full.item() == pytest.approx(pairs.item(), rel=1e-5)
    with pytest.raises(ValueError, match="T-LPIPS"):
        tlpips(restored[:, :1], gt[:, :1])


def test_pretrained_backbone_needs_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hub cache"):
        TemporalLPIPS(backbone="pretrained")


def test_total_loss_uses_the_papers_weights():
    w = LossWeights()
    assert (w.distill, w.adversarial, w.tlpips) == (1.0, 0.05, 0.1)
    assert total_loss(torch.tensor(2.0), torch.tensor(-1.0), torch.tensor(3.0)).item() == pytest.approx(2 - 0.05 + 0.3)
