"""OpenCV baselines recover a known translation of a real photo."""
from __future__ import annotations

import cv2
import pytest
import torch

from models.flow import translated_pair
from models.flow.baselines import dis_flow, farneback_flow


@pytest.fixture(scope="module")
def pair():
    from skimage import data

    img = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    image = torch.from_numpy(img).permute(2, 0, 1).float().div(255)
    return translated_pair(image, shift=(3.5, -2.25), size=(128, 128), origin=(40, 60))


@pytest.mark.parametrize("method, limit", [(dis_flow, 0.5), (farneback_flow, 1.0)])
def test_baseline_recovers_translation(pair, method, limit):
    img1, img2, gt = pair
    flow = method(img1, img2)
    assert flow.shape == (2, 128, 128) and flow.dtype == torch.float32
    epe = (flow - gt).norm(dim=0)[8:-8, 8:-8].mean().item()  # borders lack one side's content
    assert epe < limit, f"{method.__name__}: EPE {epe:.3f} px"
    zero = (method(img1, img1).norm(dim=0)).mean().item()
    assert zero < 0.05, f"{method.__name__}: identical frames give {zero:.3f} px motion"


def test_baseline_rejects_bad_input():
    with pytest.raises(ValueError, match="img1 must be a .3, H, W."):
        dis_flow(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
