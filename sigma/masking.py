"""Tube masking for masked video modeling.

Tokens are space-time tubes laid out (t, h, w) row-major — the order of a Conv3d tube
embedding flattened over its output grid. Tube masking hides the same spatial positions in
every time slice, so a masked object cannot be copied from the neighbouring frames.
"""
import torch


def num_masked_per_slice(grid, mask_ratio):
    """Masked tubes per time slice: int(mask_ratio · h·w) (176 of 196 at 90%, as VideoMAE)."""
    _, h, w = grid
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return int(mask_ratio * h * w)


def tube_mask(batch_size, grid, mask_ratio=0.9, *, generator=None, device=None):
    """Random tube mask, bool (batch_size, t·h·w), True = masked (VideoMAE's `bool_masked_pos`).

    grid: (t, h, w) token grid. Every sample masks exactly t·int(mask_ratio·h·w) tubes, so masked
    tokens can be gathered into a (B, N_mask, D) tensor.
    """
    t, h, w = grid
    n_masked = num_masked_per_slice(grid, mask_ratio)
    # A random permutation per sample; its first n_masked spatial positions are hidden.
    order = torch.rand(batch_size, h * w, generator=generator).argsort(dim=1)
    spatial = torch.zeros(batch_size, h * w, dtype=torch.bool)
    spatial.scatter_(1, order[:, :n_masked], True)
    return spatial.repeat(1, t).to(device)
