"""sigma: Sinkhorn-guided masked video modeling (SIGMA) on top of the `sigma_kernels` ops.

`sigma.losses.SinkhornSwapLoss` is the objective as a drop-in for VideoMAE-style training loops;
`sigma.masking` and `sigma.models` hold the small reusable pieces of such a loop.
"""
from .losses import SinkhornSwapLoss

__all__ = ["SinkhornSwapLoss"]
