"""Student surgery: the student is a trainable copy of the prior UNet whose `conv_in` gets
zero-initialised temporal input channels, computed as a split convolution so that the
untrained student is bit-identical to the prior."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from diffusers import UNet2DConditionModel


class SplitConvIn(nn.Conv2d):
    """conv_in over [prior channels | temporal channels], computed as two convolutions.

    conv(x, W) == conv(x[:, :k], W[:, :k]) + conv(x[:, k:], W[:, k:]) mathematically; doing
    it in two parts makes the first part the very operation the prior runs, so while the
    temporal weights are zero the student is *bit-identical* to the prior (one fused conv
    over more channels would sum in another order: equal only to ~1e-6). Parameters and
    state-dict keys are a plain Conv2d's, so `save_pretrained` / `from_pretrained` work
    unchanged (`split_conv_in` re-applies the split after loading).
    """

    prior_channels: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.prior_channels
        base = self._conv_forward(x[:, :k], self.weight[:, :k], self.bias)
        return base + self._conv_forward(x[:, k:], self.weight[:, k:], None)


def split_conv_in(unet: UNet2DConditionModel, prior_channels: int) -> UNet2DConditionModel:
    """Make `unet.conv_in` a `SplitConvIn` at `prior_channels` (in place, same parameters)."""
    conv = unet.conv_in
    if type(conv) not in (nn.Conv2d, SplitConvIn) or not 0 < prior_channels < conv.in_channels:
        raise ValueError(f"cannot split conv_in ({conv}) at {prior_channels} channels")
    if conv.padding_mode != "zeros":
        raise ValueError("split conv_in supports zero padding only")
    conv.__class__ = SplitConvIn
    conv.prior_channels = prior_channels
    return unet


def widen_conv_in(unet: UNet2DConditionModel, extra_channels: int) -> UNet2DConditionModel:
    """Append `extra_channels` zero-weight input channels to `unet.conv_in` (in place).

    The original channels keep their weights and order, so the widened UNet computes
    exactly the original function whatever the extra inputs are, until trained.
    """
    old = unet.conv_in
    new = nn.Conv2d(old.in_channels + extra_channels, old.out_channels, old.kernel_size,
                    stride=old.stride, padding=old.padding, dilation=old.dilation,
                    bias=old.bias is not None).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :old.in_channels] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels + extra_channels)
    return split_conv_in(unet, old.in_channels)


def make_student(prior: UNet2DConditionModel, extra_channels: int) -> UNet2DConditionModel:
    """A trainable copy of the prior with `extra_channels` zero-initialised temporal inputs."""
    student = widen_conv_in(copy.deepcopy(prior), extra_channels)
    student.requires_grad_(True)
    return student
