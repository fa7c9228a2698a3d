"""Training: DRFA pretraining (drfa), the x4 prior (prior), adversarial distillation (distill,
distill_step), and what they share (common: Ray Train, DeepSpeed settings, plain engines)."""
