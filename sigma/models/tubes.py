"""Tubes of a clip: the raw voxels each token covers, and their per-tube normalisation.

A clip is (B, C, T, H, W); a tube is tube_size = (pt, ph, pw) voxels of it; the N tubes of a clip
are ordered (t, h, w) row-major — the order of a Conv3d tube embedding flattened over its output
grid (see `sigma.masking`). Pure PyTorch: importable without timm.
"""
import torch

# The statistics clips are normalised with (ImageNet, as VideoMAE, SIGMA and DINO expect).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_tube(tube_size):
    tube = tuple(int(s) for s in tube_size)
    if len(tube) != 3 or min(tube) < 1:
        raise ValueError(f"tube_size must be three positive ints (pt, ph, pw), got {tube_size!r}")
    return tube


def tube_grid(video_shape, tube_size=(2, 16, 16)):
    """(T', H', W') token grid of a clip of shape (..., T, H, W); error if the tube does not divide it."""
    pt, ph, pw = _as_tube(tube_size)
    t, h, w = video_shape[-3:]
    if t % pt or h % ph or w % pw:
        hint = ""
        if len(video_shape) == 5 and video_shape[2] in (1, 3) and video_shape[1] not in (1, 3):
            hint = (f"; the clip looks like (B, T, C, H, W) = {tuple(video_shape)}: clips are (B, C, T, H, W), "
                    f"use video.transpose(1, 2)")
        raise ValueError(f"clip (T, H, W)=({t}, {h}, {w}) is not divisible by tube_size {(pt, ph, pw)}{hint}")
    return t // pt, h // ph, w // pw


def patchify_tubes(video, tube_size=(2, 16, 16)):
    """(B, C, T, H, W) -> (B, N, pt·ph·pw, C): the voxels of every tube (t, y, x row-major), channel last."""
    if video.dim() != 5:
        raise ValueError(f"video must be (B, C, T, H, W), got shape {tuple(video.shape)}")
    b, c = video.shape[:2]
    gt, gh, gw = tube_grid(video.shape, tube_size)
    pt, ph, pw = _as_tube(tube_size)
    x = video.reshape(b, c, gt, pt, gh, ph, gw, pw)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # B, T', H', W', pt, ph, pw, C
    return x.reshape(b, gt * gh * gw, pt * ph * pw, c)


def normalize_tubes(tubes, eps=1e-6):
    """Standardise each tube per channel over its voxels, then flatten channel-last.

    tubes: (B, N, P, C) -> (B, N, P·C); (x - mean) / (unbiased std + eps), as the SIGMA MLP
    projection and VideoMAE's normalised pixel target see them.
    """
    mean = tubes.mean(dim=-2, keepdim=True)
    std = tubes.var(dim=-2, unbiased=True, keepdim=True).sqrt()
    return ((tubes - mean) / (std + eps)).flatten(-2)


def tube_pixels(video, tube_size=(2, 16, 16)):
    """Normalised raw voxels of every tube, (B, N, pt·ph·pw·C) — the projection network's input.

    On the un-normalised clip this is exactly VideoMAE's `videos_patch` (its `normlize_target`
    branch); see `unnormalize_video`.
    """
    return normalize_tubes(patchify_tubes(video, tube_size))


def unnormalize_video(video, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Undo a per-channel normalisation of a (..., C, T, H, W) clip: video · std + mean (ImageNet
    statistics by default, so an ImageNet-normalised clip comes back to [0, 1] pixels, not clamped)."""
    shape = (-1, 1, 1, 1)
    mean = torch.as_tensor(mean, dtype=video.dtype, device=video.device).reshape(shape)
    std = torch.as_tensor(std, dtype=video.dtype, device=video.device).reshape(shape)
    return video * std + mean


def check_mask(mask, batch_size, num_tokens, name="mask"):
    """Validate a tube mask: bool (B, N), True = masked, the same number of masked tubes per clip.

    The per-clip count check needs the mask's values: on CPU it is checked here; on an accelerator
    it is an asynchronous device-side assertion, so it costs no host sync.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (B, N) with True = masked, got "
                        f"{type(mask).__name__ if not isinstance(mask, torch.Tensor) else mask.dtype}")
    if mask.shape != (batch_size, num_tokens):
        raise ValueError(f"{name} must have shape (B, N)=({batch_size}, {num_tokens}) (tokens (t, h, w) row-major), "
                         f"got {tuple(mask.shape)}")
    counts = mask.sum(1)
    if mask.device.type == "cpu":
        if batch_size and not bool((counts == counts[0]).all()):
            raise ValueError(f"{name} must mask the same number of tubes in every clip, got counts {counts.tolist()}")
    elif batch_size:
        torch._assert_async((counts == counts[0]).all(), f"{name} must mask the same number of tubes per clip")


def gather_tokens(x, keep):
    """Rows of x (B, N, E) where keep (B, N) is True, in token order, as (B, N_keep, E)."""
    return x[keep].reshape(x.shape[0], -1, x.shape[-1])
