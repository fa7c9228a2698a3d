"""FlowNet (RAFT / GMA / DRFA): attention bias (Eq. 2), shapes, learning, checkpoints."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from models.flow import (
    FlowConfig,
    FlowNet,
    build,
    estimate_flow,
    flow_metrics,
    flow_preset,
    load,
    read_config,
    save,
    sequence_loss,
    translated_pair,
)
from models.flow.attention import GlobalAttention


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    """(3, 256, 256) float: skimage's astronaut at half size (more texture per crop)."""
    from skimage import data

    img = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255)


def _pairs(image, shifts, origins, size=(64, 64)):
    frames = [translated_pair(image, s, size, o) for s, o in zip(shifts, origins)]
    return tuple(torch.stack(x) for x in zip(*frames))  # img1, img2, flow


# --- Eq. 1-2: the confidence bias inside the attention ---------------------------------

def _attention(seed=0, heads=2):
    torch.manual_seed(seed)
    att = GlobalAttention(context_dim=16, heads=heads, head_dim=8, position_bias=True, max_distance=4, eps=1e-6)
    with torch.no_grad():
        att.pos.table.normal_()  # a non-trivial Pos(i, j)
    return att


def test_low_confidence_keys_get_no_attention():
    att = _attention()
    ctx = torch.randn(2, 16, 5, 6)
    conf = torch.rand(2, 1, 5, 6) * 0.5 + 0.5
    bad = torch.zeros(2, 1, 5, 6, dtype=torch.bool)
    bad[0, 0, 1, 2] = bad[0, 0, 4, 5] = bad[1, 0, 0, 0] = True
    conf[bad] = 1e-9
    with torch.no_grad():
        plain = att(ctx)                      # GMA: (B, heads, hw, hw)
        biased = att(ctx, conf)               # DRFA
        logits_plain, logits_biased = att.logits(ctx), att.logits(ctx, conf)
    keys = bad.reshape(2, 1, 1, 30).expand_as(biased)
    assert plain[keys].min() > 1e-3, "control: without the bias these keys do get attention"
    assert biased[keys].max() < 1e-4, f"low-confidence keys still get weight {biased[keys].max():.2e}"
    assert torch.allclose(biased.sum(-1), torch.ones(2, 2, 30), atol=1e-5)
    # Eq. 2 exactly: S_ij(DRFA) - S_ij(GMA) = log(C_j + eps) for every query i and head
    expected = torch.log(conf + 1e-6).reshape(2, 1, 1, 30).expand_as(logits_plain)
    assert torch.allclose(logits_biased - logits_plain, expected, atol=1e-5)


def test_constant_confidence_is_plain_gma_attention():
    att = _attention(seed=1)
    ctx = torch.randn(1, 16, 4, 7)
    with torch.no_grad():
        plain = att(ctx)
        for c in (1e-3, 0.3, 0.999):
            assert torch.allclose(att(ctx, torch.full((1, 1, 4, 7), c)), plain, atol=1e-6), c
        varying = att(ctx, torch.rand(1, 1, 4, 7))
    assert not torch.allclose(varying, plain, atol=1e-3), "control: a varying confidence changes attention"


def test_position_bias_depends_on_clipped_key_minus_query_offset():
    from models.flow.attention import RelativePositionBias

    pos = RelativePositionBias(heads=2, max_distance=2)
    with torch.no_grad():
        pos.table.copy_(torch.arange(2 * 25, dtype=torch.float32).reshape(2, 5, 5))
    h, w = 4, 6
    bias = pos(h, w)                                                # (heads, hw, hw)
    assert bias.shape == (2, 24, 24)
    for (qy, qx), (ky, kx) in [((0, 0), (0, 0)), ((0, 0), (1, 2)), ((3, 5), (0, 0)), ((2, 1), (3, 0))]:
        dy, dx = max(-2, min(2, ky - qy)), max(-2, min(2, kx - qx))
        assert torch.equal(bias[:, qy * w + qx, ky * w + kx], pos.table[:, dy + 2, dx + 2])


def _gma_and_drfa():
    """A tiny GMA with the aggregation switched on (gamma 1, random Pos) and a DRFA sharing its weights."""
    torch.manual_seed(0)
    gma = build(flow_preset("tiny", "gma"))
    with torch.no_grad():
        gma.update.aggregator.gamma.fill_(1.0)
        gma.attention.pos.table.normal_()
    drfa = build(flow_preset("tiny", "drfa"))
    missing, unexpected = drfa.load_state_dict(gma.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("confidence.") for k in missing) and missing
    return gma.eval(), drfa.eval()


def test_drfa_with_flat_confidence_equals_gma_end_to_end():
    gma, drfa = _gma_and_drfa()
    img1, img2 = torch.rand(1, 3, 40, 56), torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        drfa.confidence.conv2.weight.zero_()        # C = sigmoid(bias): the same at every key
        drfa.confidence.conv2.bias.fill_(-1.0)
        ref = gma(img1, img2, iters=3)
        out = drfa(img1, img2, iters=3)
        assert torch.allclose(out.confidence, torch.full_like(out.confidence, torch.sigmoid(torch.tensor(-1.0))))
        for a, b in zip(ref.flows, out.flows):
            assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
        drfa.confidence.conv2.weight.normal_(std=1.0)  # control: a spatially varying C changes the flow
        varied = drfa(img1, img2, iters=3)
    assert (varied.flow - ref.flow).abs().max() > 1e-3


# --- correlation pyramid and convex upsampling -------------------------------------------

def test_corr_lookup_reads_dot_products_around_the_flow_target():
    from models.flow.corr import CorrPyramid

    torch.manual_seed(0)
    b, d, h, w, r = 2, 8, 6, 8, 1
    f1, f2 = torch.randn(b, d, h, w), torch.randn(b, d, h, w)
    corr = CorrPyramid(f1, f2, levels=2, radius=r)
    coords = torch.randint(0, 6, (b, 2, h, w)).float()           # integer targets: exact reads
    out = corr.lookup(coords).reshape(b, 2, 2 * r + 1, 2 * r + 1, h, w)  # [level, dy, dx]
    pooled2 = torch.nn.functional.avg_pool2d(f2, 2)              # level 1 = dot with the pooled map
    for bi, y, x in [(0, 0, 0), (1, 3, 5), (0, 5, 7), (1, 2, 1)]:
        tx, ty = coords[bi, :, y, x].long().tolist()
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                xx, yy = tx + dx, ty + dy
                want = (f1[bi, :, y, x] @ f2[bi, :, yy, xx]) / d**0.5 if 0 <= xx < w and 0 <= yy < h else 0.0
                assert torch.isclose(out[bi, 0, dy + r, dx + r, y, x], torch.as_tensor(want), atol=1e-5)
        # level 1 reads at target/2; at even targets that is a pooled cell
        if tx % 2 == 0 and ty % 2 == 0:
            want = f1[bi, :, y, x] @ pooled2[bi, :, ty // 2, tx // 2] / d**0.5
            assert torch.isclose(out[bi, 1, r, r, y, x], want, atol=1e-5)
    assert corr.channels == 2 * 9


def test_convex_upsampling_is_a_convex_combination_of_neighbours():
    from models.flow.upsample import convex_upsample

    torch.manual_seed(0)
    flow = torch.randn(1, 2, 3, 4)
    centre = torch.full((1, 9, 8, 8, 3, 4), -30.0)
    centre[:, 4] = 30.0                                            # all weight on the cell itself
    up = convex_upsample(flow, centre.reshape(1, 576, 3, 4))
    assert torch.allclose(up, 8 * flow.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3), atol=1e-4)
    split = torch.full((1, 9, 8, 8, 3, 4), -30.0)                 # [neighbour, sub-y, sub-x, y, x]
    split[:, 4, :, :4] = 30.0                                      # left half of each cell: itself
    split[:, 5, :, 4:] = 30.0                                      # right half: neighbour (dy 0, dx +1)
    up = convex_upsample(flow, split.reshape(1, 576, 3, 4))
    cell = up[0, :, 8:16, 8:16]                                    # coarse cell (y 1, x 1)
    assert torch.allclose(cell[:, :, :4], 8 * flow[0, :, 1, 1, None, None].expand(2, 8, 4), atol=1e-4)
    assert torch.allclose(cell[:, :, 4:], 8 * flow[0, :, 1, 2, None, None].expand(2, 8, 4), atol=1e-4)
    mixed = convex_upsample(flow, torch.randn(1, 576, 3, 4))       # random weights stay inside the hull
    assert mixed.abs().max() <= 8 * flow.abs().max() + 1e-5


# --- the three variants: shapes, odd sizes, confidence ---------------------------------

@pytest.mark.parametrize("variant", ["raft", "gma", "drfa"])
def test_variants_run_on_odd_sizes(variant):
    torch.manual_seed(0)
    model = build(flow_preset("tiny", variant))
    assert model.config.variant == variant
    img1, img2 = torch.rand(2, 3, 50, 70), torch.rand(2, 3, 50, 70)
    out = model(img1, img2, iters=3)
    assert len(out.flows) == 3 and all(f.shape == (2, 2, 50, 70) for f in out.flows)
    assert out.flow is out.flows[-1] and torch.isfinite(out.flow).all()
    assert not torch.equal(out.flows[0], out.flows[-1]), "iterations refine the flow"
    assert out.flow_low.shape == (2, 2, 7, 9)  # 56x72 padded grid at 1/8
    if variant == "drfa":
        assert out.confidence.shape == (2, 1, 7, 9)
        assert ((out.confidence > 0) & (out.confidence < 1)).all()
        assert out.upsampled_confidence().shape == (2, 1, 50, 70)
    else:
        assert out.confidence is None and out.upsampled_confidence() is None
    out.flow.abs().mean().backward()  # the whole graph is differentiable
    model.eval()
    with torch.no_grad():
        assert len(model(img1, img2).flows) == model.config.test_iters
        final = model(img1, img2, iters=3, final_only=True)
        assert len(final.flows) == 1 and final.flow.shape == (2, 2, 50, 70)


def test_variant_switches_change_only_the_aggregation():
    names = {v: set(build(flow_preset("tiny", v)).state_dict()) for v in ("raft", "gma", "drfa")}
    assert names["raft"] < names["gma"] < names["drfa"]
    assert all(k.startswith("confidence.") for k in names["drfa"] - names["gma"])
    with pytest.raises(ValueError, match="needs aggregation='gma'"):
        FlowConfig(aggregation="none", confidence_bias=True)
    with pytest.raises(ValueError, match="variant"):
        flow_preset("tiny", "flowformer")


def test_bad_inputs_raise_clear_errors():
    model = build(flow_preset("tiny", "raft"))
    with pytest.raises(ValueError, match="img1 must be a .B, 3, H, W."):
        model(torch.rand(3, 64, 64), torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="differ"):
        model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 72))
    with pytest.raises(ValueError, match="too small"):
        model(torch.rand(1, 3, 16, 64), torch.rand(1, 3, 16, 64))


def test_flow_init_warm_starts_the_estimate():
    torch.manual_seed(0)
    model = build(flow_preset("tiny", "raft")).eval()
    with torch.no_grad():
        model.update.flow_head.conv2.weight.zero_()  # delta = 0: the output is the initial flow
        model.update.flow_head.conv2.bias.zero_()
        init = torch.tensor([4.0, -2.0]).view(1, 2, 1, 1).expand(1, 2, 50, 70)
        out = model(torch.rand(1, 3, 50, 70), torch.rand(1, 3, 50, 70), iters=2, flow_init=init)
        assert torch.allclose(out.flow_low, init[..., :7, :9] / 8)
        # away from the zero-padded border of convex upsampling the full-res flow is the init
        assert torch.allclose(out.flow[..., 12:-12, 12:-12], init[..., 12:-12, 12:-12], atol=1e-5)
        again = model(torch.rand(1, 3, 50, 70), torch.rand(1, 3, 50, 70), iters=1, flow_init=out.flow_low)
        assert torch.allclose(again.flow_low, out.flow_low)


# --- learning ---------------------------------------------------------------------------

def test_tiny_drfa_overfits_one_batch(astronaut):
    """Two 64x64 pairs sharing frame 1, with different (fractional) translations: frame 2
    reaches the net only through the correlation volume, so without it no single answer
    halves the EPE (the best constant flow, the mean shift, leaves EPE 3.3 px)."""
    torch.manual_seed(0)
    img1, img2, gt = _pairs(astronaut, shifts=[(2.5, -1.5), (-3.0, 2.0)], origins=[(80, 80), (80, 80)])
    assert torch.equal(img1[0], img1[1])
    model = build(flow_preset("tiny", "drfa", train_iters=3)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    with torch.no_grad():
        before = flow_metrics(model(img1, img2).flow, gt)["epe"]
    for step in range(200):
        loss, metrics = sequence_loss(model(img1, img2).flows, gt)
        if metrics["epe"] < 0.35 * before:  # past the target with a margin: stop early
            break
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    with torch.no_grad():
        after = flow_metrics(model(img1, img2).flow, gt)["epe"]
    assert after < 0.5 * before, f"EPE before {before:.3f} px, after {after:.3f} px ({step} steps)"
    print(f"overfit: EPE {before:.3f} -> {after:.3f} px in {step} steps")


# --- checkpoints ------------------------------------------------------------------------

def test_checkpoint_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    cfg = flow_preset("tiny", "drfa", context_norm="batch")  # batch norm: buffers must travel too
    model = build(cfg)
    img1, img2 = torch.rand(2, 3, 48, 64), torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        model.update.aggregator.gamma.fill_(0.7)
        model.attention.pos.table.normal_()
        model.train()(img1, img2, iters=1)  # moves the running statistics off their init
    model.eval()
    with torch.no_grad():
        ref = model(img1, img2, iters=4)
    path = save(model, tmp_path / "drfa.safetensors")
    assert json.loads(path.with_suffix(".json").read_text()) == json.loads(cfg.to_json())
    assert read_config(path) == cfg
    loaded = load(path)
    assert isinstance(loaded, FlowNet) and loaded.config == cfg and not loaded.training
    with torch.no_grad():
        out = loaded(img1, img2, iters=4)
    for a, b in zip(ref.flows + [ref.confidence], out.flows + [out.confidence]):
        assert torch.equal(a, b)
    assert torch.equal(estimate_flow(loaded, img1, img2, iters=4), ref.flow)
    single = estimate_flow(loaded, img1[1], img2[1], iters=4)  # unbatched (3, H, W) -> (2, H, W)
    assert single.shape == (2, 48, 64) and torch.allclose(single, ref.flow[1], atol=1e-4)


def test_load_refuses_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a d2vr flow checkpoint"):
        load(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="no checkpoint"):
        load(tmp_path / "missing.safetensors")


def test_estimate_flow_keeps_training_mode_and_no_grad():
    model = build(flow_preset("tiny", "gma")).train()
    flow = estimate_flow(model, torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), iters=2)
    assert flow.shape == (1, 2, 64, 64) and not flow.requires_grad and model.training


def test_presets_sizes():
    full = flow_preset("full", "drfa")
    assert (full.feature_dim, full.hidden_dim, full.context_dim, full.corr_levels, full.corr_radius,
            full.train_iters, full.test_iters, full.gma_heads) == (256, 128, 128, 4, 4, 12, 32, 1)
    n_raft = sum(p.numel() for p in build(flow_preset("full", "raft")).parameters())
    assert 5.1e6 < n_raft < 5.4e6  # RAFT-large: 5.3M parameters
    assert np.isclose(FlowConfig.from_json(full.to_json()).corr_radius, 4)


# --- bf16 (DeepSpeed casts the weights on a GPU; CPU runs bf16 too) ---------------------

@pytest.mark.parametrize("variant", ["drfa", "gma", "raft"])
def test_training_step_runs_with_bf16_weights(astronaut, variant):
    """The weights in bf16 (as DeepSpeed's bf16 mode casts them), images bf16, the ground
    truth flow float32: one drfa_step runs, the flows come out float32, the loss is finite
    and close to the fp32 model's, and the weights move."""
    from pipelines.train.common import PlainEngine
    from pipelines.train.drfa import drfa_step

    img1, img2, gt = _pairs(astronaut, shifts=[(2.5, -1.5), (-3.0, 2.0)], origins=[(80, 80), (40, 60)])
    torch.manual_seed(0)
    model = build(flow_preset("tiny", variant, train_iters=2)).train()
    with torch.no_grad():
        ref, _ = sequence_loss(model(img1, img2).flows, gt)
    model.to(torch.bfloat16)
    with torch.no_grad():
        out = model(img1.bfloat16(), img2.bfloat16())
    assert all(f.dtype == torch.float32 for f in out.flows)
    engine = PlainEngine(model, torch.optim.AdamW(model.parameters(), lr=1e-3), grad_clip=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    loss, metrics = drfa_step(engine, {"img1": img1.bfloat16(), "img2": img2.bfloat16(), "flow": gt,
                                       "valid": torch.ones_like(gt[:, :1, :, :])[:, 0]}, 0.8, None)
    assert torch.isfinite(loss) and abs(float(loss) - float(ref)) < 0.1 * float(ref) + 0.05
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
