"""An exponential moving average of a module's weights (not in the paper; see the README's
"method in miniature": with a few hundred steps of small batches the raw weights random-walk,
and their average is the better restorer).

`ema = WeightEMA(module, decay)` copies the weights (fp32, on the module's device);
`ema.update(module)` after each optimizer step sets every floating-point tensor to
`decay * ema + (1 - decay) * weight` (torch.optim.swa_utils' EMA rule; integer buffers are
copied); `state_dict()` / `load_state_dict()` are what checkpoints save and what exports write.
"""
from __future__ import annotations

import torch


class WeightEMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema-decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {k: (v.detach().float() if v.is_floating_point() else v.detach()).clone()
                       for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for name, value in module.state_dict().items():
            average = self.shadow[name]
            if average.is_floating_point():
                average.mul_(self.decay).add_(value.detach().to(average), alpha=1.0 - self.decay)
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """fp32 CPU copies (the export's student weights)."""
        return {k: v.detach().cpu().clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise KeyError(f"EMA state does not match the module: {sorted(missing)[:5]}")
        for k, v in state.items():
            self.shadow[k].copy_(v)
