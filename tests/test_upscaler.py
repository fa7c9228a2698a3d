"""The video upscaler on the tiny preset: loading, step-0 equivalence, samplers, temporal input."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest

from models.presets import build_random_bundle, load_upscaler, save_tiny_pretrained, upscaler_preset
from models.temporal import temporal_channels, upscale_flow
from models.upscaler.bundle import UpscalerBundle
from models.upscaler.video import TemporalState, VideoUpscaler


def tiny_flow_net():
    """The real tiny DRFA (random weights)."""
    from models.flow import build, flow_preset

    torch.manual_seed(0)
    return build(flow_preset("tiny", variant="drfa"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_pretrained(tmp_path_factory.mktemp("tiny_x4"), seed=0)


def make_upscaler(tiny_dir, flow=True, **cfg) -> VideoUpscaler:
    bundle = UpscalerBundle.from_pretrained(tiny_dir)
    return VideoUpscaler(bundle, upscaler_preset("tiny", pretrained=str(tiny_dir), **cfg),
                         tiny_flow_net() if flow else None)


@pytest.fixture(scope="module")
def up(tiny_dir):
    return make_upscaler(tiny_dir)


def smooth_clip(t: int, h: int, w: int, seed: int = 0, shift: int = 1) -> torch.Tensor:
    """(t, 3, h, w) in [0, 1]: a smooth random texture panning `shift` px per frame."""
    g = torch.Generator().manual_seed(seed)
    big = torch.rand(1, 3, h // 4 + 2, (w + t * shift) // 4 + 2, generator=g)
    tex = F.interpolate(big, size=(h, w + t * shift), mode="bicubic", align_corners=False).clamp(0, 1)[0]
    return torch.stack([tex[:, :, i * shift:i * shift + w] for i in range(t)])


def test_from_pretrained_reproduces_outputs_exactly(tiny_dir, tmp_path):
    lq = smooth_clip(2, 16, 16)
    a = make_upscaler(tiny_dir)
    out_a = a.restore_clip(lq, seed=3)
    a_bundle = UpscalerBundle.from_pretrained(tiny_dir)
    a_bundle.save_pretrained(tmp_path / "again")
    b = make_upscaler(tmp_path / "again")
    assert torch.equal(out_a, b.restore_clip(lq, seed=3))
    assert torch.equal(a_bundle.prompt_embeds, build_random_bundle("tiny", seed=0).prompt_embeds)
    # a trained student survives save_student / student_unet=path
    with torch.no_grad():
        a.student.conv_in.weight[:, 7:].normal_(0, 0.05)
    out_trained = a.restore_clip(lq, seed=3)
    assert not torch.equal(out_trained, out_a)
    a.save_student(tmp_path / "student")
    c = load_upscaler(upscaler_preset("tiny", pretrained=str(tiny_dir)), a.flow_net,
                                  student_unet=tmp_path / "student")
    assert torch.equal(c.restore_clip(lq, seed=3), out_trained)


def test_student_equals_prior_at_step_zero(up):
    g = torch.Generator().manual_seed(0)
    lq = smooth_clip(2, 16, 16)
    cond = up.lowres_condition(lq[1:], g)
    x = up.randn((1, 4, 16, 16), g)
    no_prev = up.temporal_input(lq[1:], None)
    assert no_prev.shape == (1, temporal_channels("unshuffle", 4), 16, 16) and not no_prev.any()
    # zero-initialised extra conv_in weights, original ones untouched
    assert not up.student.conv_in.weight[:, 7:].any()
    assert torch.equal(up.student.conv_in.weight[:, :7], up.teacher.conv_in.weight)
    with_prev = up.temporal_input(lq[1:], TemporalState(lq[:1], torch.rand(1, 3, 64, 64)))
    assert with_prev.abs().sum() > 0
    with torch.no_grad():
        for t in (999, 750, 250, 0):
            teacher = up.unet_output("teacher", x, t, cond)
            assert teacher.abs().mean() > 1e-3
            for temporal in (no_prev, with_prev):     # bit-identical (SplitConvIn)
                assert torch.equal(up.unet_output("student", x, t, cond, temporal), teacher)
    # the whole few-step sampler, same noise: student == prior
    s = up.sample_few_step(cond, no_prev, torch.Generator().manual_seed(5))
    p = up.sample_few_step(cond, None, torch.Generator().manual_seed(5), unet="teacher")
    assert torch.equal(s, p)


def test_restore_frame_state_none_is_first_frame_of_clip(up):
    lq = smooth_clip(3, 16, 16, seed=1)
    clip = up.restore_clip(lq, seed=7)
    assert clip.shape == (3, 3, 64, 64) and clip.dtype == torch.float32
    assert 0 <= float(clip.min()) and float(clip.max()) <= 1
    first, state = up.restore_frame(lq[0], None, seed=7)
    assert torch.equal(first, clip[0])
    # chained restore_frame calls reproduce the clip: frames in order, each on its own previous output
    second, state2 = up.restore_frame(lq[1], state, seed=8)
    third, _ = up.restore_frame(lq[2], state2, seed=9)
    assert torch.equal(second, clip[1]) and torch.equal(third, clip[2])
    assert torch.equal(state2.hr[0], clip[1]) and torch.equal(state2.lq[0], lq[1])
    # batched clips (B, T, 3, h, w)
    both = up.restore_clip(torch.stack([lq, lq]), seed=7)
    assert both.shape == (2, 3, 3, 64, 64)


def test_temporal_conditioning_changes_a_trained_student(tiny_dir):
    up = make_upscaler(tiny_dir)
    with torch.no_grad():
        up.student.conv_in.weight[:, 7:].normal_(0, 0.1)
    lq = smooth_clip(2, 16, 16, seed=2)
    _, state = up.restore_frame(lq[0], None, seed=0)
    other = TemporalState(state.lq, torch.rand_like(state.hr))
    a, _ = up.restore_frame(lq[1], state, seed=1)
    b, _ = up.restore_frame(lq[1], other, seed=1)
    c, _ = up.restore_frame(lq[1], None, seed=1)
    assert (a - b).abs().mean() > 1e-4 and (a - c).abs().mean() > 1e-4


def test_seeds_make_results_deterministic(up):
    lq = smooth_clip(1, 16, 16, seed=3)[0]
    a, _ = up.restore_frame(lq, None, seed=11)
    b, _ = up.restore_frame(lq, None, seed=11)
    c, _ = up.restore_frame(lq, None, seed=12)
    d, _ = up.restore_frame(lq, None, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b) and torch.equal(a, d)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("solver", ["ddim", "dpm"])
def test_teacher_multi_step_sampler(up, solver):
    lq = smooth_clip(1, 16, 16, seed=4)
    cond = up.lowres_condition(lq, torch.Generator().manual_seed(0))
    lat = up.sample_multi_step(cond, torch.Generator().manual_seed(0), steps=6, solver=solver)
    again = up.sample_multi_step(cond, torch.Generator().manual_seed(0), steps=6, solver=solver)
    assert lat.shape == (1, 4, 16, 16) and torch.isfinite(lat).all() and torch.equal(lat, again)
    out = up.restore_clip(lq, sampler="teacher", steps=3)
    assert out.shape == (1, 3, 64, 64)


def test_warp_uses_current_to_previous_flow_scaled_to_hr(tiny_dir, monkeypatch):
    """Oracle flow: the current frame is the previous one moved 4 HR px (1 LR px) right."""
    up = make_upscaler(tiny_dir, flow=False)
    hr = smooth_clip(2, 64, 64 + 4, seed=5, shift=0)[0]
    prev_hr = hr[:, :, 4:].unsqueeze(0)                       # prev(x) = hr(x + 4)
    cur_hr = hr[:, :, :64].unsqueeze(0)                       # cur(x) = hr(x) = prev(x - 4)
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0] = -1.0                                         # cur pixel p is seen at p - 1 (LR) in prev
    monkeypatch.setattr(up, "lowres_flow", lambda lq, prev: flow)
    lq = torch.rand(1, 3, 16, 16)
    temporal = up.temporal_input(lq, TemporalState(lq, prev_hr))
    warped = (F.pixel_shuffle(temporal[:, :48], 4) + 1) / 2
    valid = temporal[:, 48:]
    assert torch.equal(valid[..., 0], torch.zeros(1, 1, 16)) and torch.equal(valid[..., 1:], torch.ones(1, 1, 16, 15))
    torch.testing.assert_close(warped[..., 4:], cur_hr[..., 4:], rtol=0, atol=1e-5)
    # and the flow upscaling: x4 size, x4 displacement
    expected = torch.zeros(1, 2, 64, 64)
    expected[:, 0] = -4.0
    assert torch.equal(upscale_flow(flow, 4), expected)


def test_real_flow_net_runs_in_the_loop(up):
    lq = smooth_clip(3, 16, 16, seed=6, shift=1)
    assert up.restore_clip(lq).shape == (3, 3, 64, 64)
    flow = up.lowres_flow(lq[1:2], lq[:1])
    assert flow.shape == (1, 2, 16, 16) and torch.isfinite(flow).all()
    if up.flow_net is not None:
        assert all(not p.requires_grad for p in up.flow_net.parameters()) and not up.flow_net.training


def test_bad_inputs_raise_clear_errors(up):
    with pytest.raises(ValueError, match="lq"):
        up.restore_frame(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        up.restore_frame(torch.rand(1, 3, 16, 16) * 3)
    with pytest.raises(ValueError, match="state.lq"):
        up.restore_frame(torch.rand(1, 3, 16, 16), TemporalState(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32)))
    with pytest.raises(ValueError, match="student_timesteps"):
        upscaler_preset("tiny", student_timesteps=(250, 500))
    with pytest.raises(ValueError, match="sampler"):
        up.restore_frame(torch.rand(3, 16, 16), sampler="euler")


def test_prompt_embedding_comes_from_the_text_encoder_when_not_saved(tiny_dir, tmp_path):
    """The sd-x4 path offline: a tiny CLIP text encoder + tokenizer saved in the hub layout."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    UpscalerBundle.from_pretrained(tiny_dir).save_pretrained(tmp_path)
    tokenizer = CLIPTokenizer(model_max_length=77)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=3, hidden_size=32, intermediate_size=37,
                                                num_hidden_layers=2, num_attention_heads=4,
                                                max_position_embeddings=77, bos_token_id=0,
                                                eos_token_id=2, pad_token_id=2)).eval()
    text_encoder.save_pretrained(tmp_path / "text_encoder")

    def expected(prompt):
        ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return text_encoder(ids)[0]

    saved = UpscalerBundle.from_pretrained(tmp_path, prompt="")            # the saved embedding matches ""
    assert torch.equal(saved.prompt_embeds, build_random_bundle("tiny", seed=0).prompt_embeds)
    other = UpscalerBundle.from_pretrained(tmp_path, prompt="a photo")     # another prompt: text encoder
    assert other.prompt_embeds.shape == (1, 77, 32)
    torch.testing.assert_close(other.prompt_embeds, expected("a photo"))
    (tmp_path / "prompt_embeds.safetensors").unlink()
    torch.testing.assert_close(UpscalerBundle.from_pretrained(tmp_path).prompt_embeds, expected(""))
    up = VideoUpscaler(other, upscaler_preset("tiny", pretrained=str(tmp_path), prompt="a photo"))
    assert up.restore_frame(torch.rand(3, 16, 16))[0].shape == (3, 64, 64)


def test_small_frames_are_upscaled_for_the_flow_net(up, monkeypatch):
    """Frames below the flow net's minimum are estimated k x larger; the flow comes back /k."""
    if up.flow_net is None:
        pytest.skip("models.flow not available")
    import models.flow

    need = up.flow_net.config.min_size
    seen = []

    def fake_estimate(model, img1, img2, iters=None):
        seen.append(tuple(img1.shape[-2:]))
        return torch.full((img1.shape[0], 2, *img1.shape[-2:]), 3.0)      # 3 px at the estimate's size

    monkeypatch.setattr(models.flow, "estimate_flow", fake_estimate)
    lq = torch.rand(1, 3, 16, 16)
    k = -(-need // 16)
    flow = up.lowres_flow(lq, lq)
    assert seen == [(16 * k, 16 * k)] and min(seen[0]) >= need
    torch.testing.assert_close(flow, torch.full((1, 2, 16, 16), 3.0 / k))


def test_sampler_input_is_what_sample_few_step_feeds_the_student(up):
    """Distillation's `student_input="sampled"`: the input at step k is the sampler's own."""
    lq = smooth_clip(1, 16, 16)
    cond = up.lowres_condition(lq, torch.Generator().manual_seed(0))
    temporal = up.temporal_input(lq, None)
    seen, predict = [], up.predict_x0

    def recording(which, x_t, t, c, tmp=None):
        seen.append(x_t.clone())
        return predict(which, x_t, t, c, tmp)

    up.predict_x0 = recording
    try:
        up.sample_few_step(cond, temporal, torch.Generator().manual_seed(5))
        full = list(seen)
        for k in range(len(up.cfg.student_timesteps)):
            seen.clear()
            x = up.sampler_input(cond, temporal, torch.tensor([k]), torch.Generator().manual_seed(5))
            assert torch.equal(x, full[k]) and len(seen) == k             # that input, k calls
    finally:
        del up.predict_x0
