"""AdamW over timm's parameter groups, timm's per-step cosine schedule, and the lr scaling rule.

Weight decay applies to weight matrices (prototypes included); norms, biases and the names a
model lists in `no_weight_decay()` are not decayed. With `layer_decay`, timm's
`param_groups_layer_decay` gives each group an `lr_scale` (layer_decay^(depth - layer), from the
model's `group_matcher`) that timm's scheduler multiplies into the group's lr at every update.
"""
import logging

import torch


def scaled_lr(base_lr, global_batch):
    """The linear scaling rule: `base_lr` is the rate for a global batch of 256 clips."""
    return base_lr * global_batch / 256


def build_optimizer(model, lr, weight_decay, betas, layer_decay=None):
    """AdamW over the trainable parameters of `model` (already on its device): two weight-decay
    groups, or timm's layer-decay groups when `layer_decay` is given."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = list(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else []
    if layer_decay is None:
        groups = param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip)
    else:
        groups = param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip,
                                          layer_decay=layer_decay)
    # The fused implementation (CPU and CUDA) is several times faster than the foreach one here.
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True)


def build_scheduler(optimizer, total_steps, warmup_steps, min_lr, warmup_lr=0.0):
    """Per-step schedule: linear warmup from `warmup_lr` over `warmup_steps` (at most
    total_steps - 1, so the peak is reached), then a half cosine from the optimizer's lr to
    `min_lr`. Call `.step_update(step)` before each optimizer step (step = steps already taken)."""
    from timm.scheduler import CosineLRScheduler

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
