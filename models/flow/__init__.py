"""Optical flow for d2vr: RAFT, GMA and the paper's DRFA as one network (`FlowNet`).

    cfg = flow_preset("tiny", "drfa")
    model = build(cfg)
    out = model(img1, img2)              # FlowOutput: flows per iteration, confidence
    loss, metrics = sequence_loss(out.flows, flow_gt, valid)
    save(model, "drfa.safetensors"); model = load("drfa.safetensors")
    flow = estimate_flow(model, img1, img2, iters=32)
"""
from models.flow.baselines import dis_flow, farneback_flow
from models.flow.checkpoint import build, estimate_flow, load, read_config, save
from models.flow.config import FlowConfig, flow_preset
from models.flow.loss import flow_metrics, sequence_loss
from models.flow.network import FlowNet, FlowOutput
from models.flow.synthetic import translated_pair
from models.flow.warp import backward_warp, flow_to_color, forward_backward_occlusion

DRFA = FlowNet

__all__ = [
    "DRFA", "FlowConfig", "FlowNet", "FlowOutput", "backward_warp", "build", "dis_flow", "estimate_flow",
    "farneback_flow", "flow_metrics", "flow_preset", "flow_to_color", "forward_backward_occlusion", "load",
    "read_config", "save", "sequence_loss", "translated_pair",
]
