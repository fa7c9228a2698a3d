"""The few-step x0 sampler's arithmetic, shared by inference and prior training.

The student's sampler (paper: T_student = (750, 500, 250, 0)) starts from pure noise at the
first timestep, predicts x0 there, re-noises it with fresh noise to the next timestep, and so
on; the last x0 is the output. `VideoUpscaler.sample_few_step` runs it at inference;
`pipelines.train.prior` runs the same steps (`sampler_inputs`) to train a prior on exactly the
inputs this sampler feeds it (x_t that no forward diffusion of a real frame produces: pure
noise at 750, a blurry estimate plus noise later).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")


def x0_from_output(prediction_type: str, out: torch.Tensor, x_t: torch.Tensor,
                   alpha_bar: torch.Tensor) -> torch.Tensor:
    """The UNet's x0 from its output `out` at x_t; alpha_bar broadcastable to x_t ((B, 1, 1, 1))."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "v_prediction":
        return a * x_t - s * out
    if prediction_type == "sample":                 # the small prior predicts x0 itself
        return out
    if prediction_type == "epsilon":
        return (x_t - s * out) / a
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; one of {PREDICTION_TYPES}")


def renoise(x0: torch.Tensor, alpha_bar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward diffusion q(x_t | x0): sqrt(ab_t) x0 + sqrt(1 - ab_t) noise."""
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def sampler_inputs(predict_x0: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor],
                   noise: Callable[[int, torch.Tensor], torch.Tensor], timesteps: Sequence[int],
                   alphas_cumprod: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """What the few-step sampler feeds its model at step `stop[b]` of `timesteps`, per batch row b.

    x = noise(0, all rows); for steps i < stop[b]: x0 = predict_x0(x[rows], timesteps[i], rows)
    and x[rows] = renoise(x0, ab[timesteps[i + 1]], noise(i + 1, rows)), where `rows` are the
    batch indices still running (rows that stop earlier are not computed further).
    `noise(i, rows)`: the N(0, 1) draw of step i for those rows; `stop` (B,) long in
    [0, len(timesteps) - 1].
    """
    x = noise(0, torch.arange(len(stop), device=stop.device)).clone()
    for i in range(int(stop.max()) if stop.numel() else 0):
        rows = (stop > i).nonzero().flatten()
        x0 = predict_x0(x[rows], int(timesteps[i]), rows)
        ab = alphas_cumprod.to(x0.device)[int(timesteps[i + 1])].reshape(1, 1, 1, 1)
        x[rows] = renoise(x0, ab, noise(i + 1, rows))
    return x


def sample_few_step(predict_x0: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor],
                    noise: Callable[[int, torch.Tensor], torch.Tensor], batch: int, timesteps: Sequence[int],
                    alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The whole sampler for `batch` rows: the model's x0 at the last timestep."""
    last = torch.full((batch,), len(timesteps) - 1, dtype=torch.long)
    x = sampler_inputs(predict_x0, noise, timesteps, alphas_cumprod, last)
    return predict_x0(x, int(timesteps[-1]), torch.arange(batch))
