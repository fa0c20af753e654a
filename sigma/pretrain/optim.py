"""Optimizer and learning-rate schedule of the pretraining recipe (VideoMAE / SIGMA).

AdamW with betas (0.9, 0.95) and weight decay 0.05 on weight matrices (the prototypes included);
norms, biases, position tables and mask tokens are not decayed. Peak lr = base_lr · global
batch / 256; linear warmup then cosine decay to min_lr, updated every optimizer step.
"""
import logging

import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler


def peak_lr(base_lr, global_batch):
    """The linear scaling rule: base_lr is the rate for a global batch of 256 clips."""
    return base_lr * global_batch / 256


def build_optimizer(module, lr, weight_decay, betas):
    """AdamW over the trainable parameters of `module` (a PretrainModule, already on its device),
    two weight-decay groups."""
    skip = module.no_weight_decay() if hasattr(module, "no_weight_decay") else ()
    groups = param_groups_weight_decay(module, weight_decay=weight_decay, no_weight_decay_list=skip)
    # The fused implementation (CPU and CUDA) is several times faster than the foreach one here.
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True)


def build_scheduler(optimizer, total_steps, warmup_steps, min_lr, warmup_lr):
    """Per-step schedule: linear warmup from warmup_lr over warmup_steps, then a half cosine from
    the optimizer's lr to min_lr over the remaining steps. Call `.step_update(step)` before each
    optimizer step (step = optimizer steps already taken)."""
    warmup_steps = min(int(warmup_steps), max(int(total_steps) - 1, 0))
    t_initial = max(int(total_steps) - warmup_steps, 1)
    # With one step after the warmup (tiny test runs) timm warns that the cosine "has no effect":
    # true and expected there, so the warning is held back for that case only.
    cosine_log = logging.getLogger(CosineLRScheduler.__module__)
    level = cosine_log.level
    if t_initial == 1:
        cosine_log.setLevel(logging.ERROR)
    try:
        return CosineLRScheduler(optimizer, t_initial=t_initial, lr_min=min_lr, warmup_t=warmup_steps,
                                 warmup_lr_init=warmup_lr, warmup_prefix=True, t_in_epochs=False)
    finally:
        cosine_log.setLevel(level)
