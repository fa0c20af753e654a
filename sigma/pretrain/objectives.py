"""The pretraining objectives, each as one module holding everything that is trained.

    sigma  SIGMA: the video model and the projection predict each other's Sinkhorn cluster
           assignments (`SinkhornSwapLoss`; the prototypes are trained too).
    pixel  VideoMAE: mean squared error between the predictions and the normalised pixels of the
           masked tubes (the projection is the fixed "pixels" target, no parameters).
    l2     mean squared error between the predictions and the projection's features, both
           trained: the ablation that collapses without the Sinkhorn clustering.

Keeping model, projection and loss in one `nn.Module` lets DDP average every gradient (the
prototypes' included) with one wrapper, as `SinkhornSwapLoss` expects.
"""
import torch
import torch.nn.functional as F
from torch import nn

from sigma.losses import SinkhornSwapLoss

OBJECTIVES = ("sigma", "pixel", "l2")


class PretrainModule(nn.Module):
    """model + projection (+ criterion for sigma).

    forward(video (B, C, T, H, W) float, mask (B, N) bool, True = masked) ->
    (loss 0-d float32, pred (B, N_mask, D), target (B, N_mask, D)); pred and target are returned
    for monitoring (collapse measures) and carry gradient where they are trained.
    """

    def __init__(self, objective, model, projection, criterion=None):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if (objective == "sigma") != (criterion is not None):
            raise ValueError("objective 'sigma' needs a SinkhornSwapLoss criterion, and only it takes one")
        self.objective = objective
        self.model = model
        self.projection = projection
        if criterion is not None:
            self.criterion = criterion

    def forward(self, video, mask):
        pred = self.model(video, mask)
        if self.objective == "pixel":
            with torch.no_grad():
                target = self.projection(video, mask)
            # VideoMAE's MSE, in float32 even under autocast.
            loss = F.mse_loss(pred.float(), target.float())
        elif self.objective == "l2":
            target = self.projection(video, mask)
            loss = F.mse_loss(pred.float(), target.float())
        else:
            target = self.projection(video, mask)
            loss = self.criterion(pred, target, mask)
        return loss, pred, target

    def no_weight_decay(self):
        """Full parameter names the model / projection exclude from weight decay (position tables,
        mask / class tokens); norms and biases are excluded by shape elsewhere."""
        names = set()
        for prefix, module in (("model", self.model), ("projection", self.projection)):
            for sub_name, sub in module.named_modules():
                fn = getattr(sub, "no_weight_decay", None)
                if callable(fn):
                    base = f"{prefix}.{sub_name}." if sub_name else f"{prefix}."
                    names.update(base + n for n in fn())
        return names


def build_criterion(cfg, dim):
    """SinkhornSwapLoss from the `objective` config section (None for pixel / l2)."""
    o = cfg["objective"]
    if o["name"] != "sigma":
        return None, {}
    kwargs = {"num_prototypes": o["num_prototypes"], "dim": dim, "epsilon": o["epsilon"],
              "sinkhorn_iterations": o["sinkhorn_iterations"], "temperature": o["temperature"],
              "targets": o["targets"], "backend": o["backend"]}
    # Diagnostics are switched on only for the steps that log them (they cost a pass over the scores).
    return SinkhornSwapLoss(**kwargs, compute_stats=False), kwargs
