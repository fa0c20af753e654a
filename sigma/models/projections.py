"""Projection networks: a clip and its tube mask -> target features of the masked tubes.

Every projection is an `nn.Module` with `forward(video, mask) -> (B, N_mask, D)` (video float
(B, C, T, H, W) as the model sees it, ImageNet-normalised; mask bool (B, N), True = masked, tokens
(t, h, w) row-major; rows in that order), `.out_dim` (D) and `.trainable` (whether the optimizer
should get its parameters). `create_projection(kind, ...)` builds one by name:

- "mlp": SIGMA's MLP on the normalised raw voxels of each masked tube (trainable);
- "dino": a frozen DINO ViT-S/16 (D=384) or ViT-B/16 (D=768) on every tube's first frame, patch
  tokens after the final norm standardised per clip and per channel (needs timm);
- "pixels": VideoMAE's normalised-pixel target (D = 3·pt·ph·pw), for the baseline.

This module imports without timm (only "dino" needs it, imported when built).
"""
import math
import re

import torch
import torch.nn as nn

from .tubes import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    _as_tube,
    check_mask,
    gather_tokens,
    tube_grid,
    tube_pixels,
    unnormalize_video,
)


def _masked_tube_pixels(video, mask, tube_size, mean, std):
    """Normalised voxels of the masked tubes (B, N_mask, pt·ph·pw·C), of the clip un-normalised first
    (with mean/std None the clip is taken as it is)."""
    if video.dim() != 5:
        raise ValueError(f"video must be (B, C, T, H, W), got shape {tuple(video.shape)}")
    n = math.prod(tube_grid(video.shape, tube_size))
    check_mask(mask, video.shape[0], n)
    if mean is not None:
        video = unnormalize_video(video, mean, std)
    return gather_tokens(tube_pixels(video, tube_size), mask)


class TubeProjectionMLP(nn.Module):
    """SIGMA's MLP projection network on raw normalised tubes: in_dim -> hidden... -> out_dim, GELU
    between layers (1536 -> 1024 -> 1024 -> 512 -> 256 in the released configs).

    `forward(tubes)`: (..., in_dim), e.g. `tube_pixels(video)[mask]` -> (..., out_dim). For the
    `forward(video, mask)` projection interface use `MLPProjection` (same parameters).
    """

    trainable = True

    def __init__(self, in_dim=1536, hidden_dims=(1024, 1024, 512), out_dim=256):
        super().__init__()
        dims = (in_dim, *hidden_dims, out_dim)
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, tubes):
        if tubes.shape[-1] != self.in_dim:
            raise ValueError(f"tubes must be (..., in_dim={self.in_dim}): the C·pt·ph·pw voxels of each tube, as "
                             f"tube_pixels gives them; got shape {tuple(tubes.shape)} (for a clip and a mask, use "
                             f"MLPProjection)")
        return self.net(tubes)


class MLPProjection(TubeProjectionMLP):
    """SIGMA's MLP projection behind the projection interface: forward(video, mask) -> (B, N_mask, D).

    The MLP reads `tube_pixels` of the un-normalised clip (clip · std + mean), as the released code
    feeds VideoMAE's normalised-pixel target to it; pass mean=None to use the clip as given. The
    state dict is that of `TubeProjectionMLP` (keys `net.*`).
    """

    def __init__(self, tube_size=(2, 16, 16), in_chans=3, hidden_dims=(1024, 1024, 512), out_dim=256,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.tube_size = _as_tube(tube_size)
        super().__init__(in_dim=in_chans * math.prod(self.tube_size), hidden_dims=tuple(hidden_dims), out_dim=out_dim)
        self.mean, self.std = mean, std

    def forward(self, video, mask):
        return self.net(_masked_tube_pixels(video, mask, self.tube_size, self.mean, self.std))


class PixelProjection(nn.Module):
    """VideoMAE's normalised-pixel regression target: `tube_pixels` of the un-normalised clip for the
    masked tubes, (B, N_mask, C·pt·ph·pw). No parameters."""

    trainable = False

    def __init__(self, tube_size=(2, 16, 16), in_chans=3, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.tube_size = _as_tube(tube_size)
        self.out_dim = in_chans * math.prod(self.tube_size)
        self.mean, self.std = mean, std

    @torch.no_grad()
    def forward(self, video, mask):
        return _masked_tube_pixels(video, mask, self.tube_size, self.mean, self.std)


# --- frozen DINO -----------------------------------------------------------------------------------

DINO_ARCHS = {"small": ("vit_small_patch16_224", 384), "base": ("vit_base_patch16_224", 768)}


def read_dino_state_dict(path):
    """A DINO ViT state dict from a local file, in the official DINO layout (a bare backbone state
    dict, or a training checkpoint with `teacher`/`student` entries and `module.`/`backbone.` key
    prefixes) or timm's; `.pth` (read with weights_only) or `.safetensors`. The DINO head and any
    classifier head are dropped."""
    from .checkpoints import load_state_file
    state = load_state_file(path)
    if isinstance(state, dict):
        for key in ("teacher", "state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a DINO ViT state dict (a dict of tensors)")
    out = {}
    for k, v in state.items():
        k = re.sub(r"^(module\.)?(backbone\.)?", "", k)
        if k.startswith("head.") or k.startswith("head_"):
            continue
        out[k] = v
    return out


class DINOProjection(nn.Module):
    """Frozen DINO ViT-S/16 or ViT-B/16 features of every tube: forward(video, mask) -> (B, N_mask, D).

    The first frame of every time slice of tubes (every second frame for 2-frame tubes) goes through
    timm's ViT (the clip's ImageNet normalisation is DINO's); its patch tokens after the final norm,
    (T', H/16, W/16) per clip in (t, h, w) row-major order — the tube grid — are standardised per
    clip and per channel over all tokens ((x - mean) / (unbiased std + eps)), then the masked ones
    are returned. The tube's spatial size must be DINO's 16×16 patch.

    weights: path of a local `.pth`/`.safetensors` file (see `read_dino_state_dict`); never any
    network access. arch: "small" or "base"; None infers it from the weights. Random weights need
    `allow_random_weights=True` (tests only).
    """

    trainable = False

    def __init__(self, weights=None, arch=None, tube_size=(2, 16, 16), eps=1e-6, allow_random_weights=False):
        super().__init__()
        try:
            import timm
        except ImportError as exc:
            raise ImportError("the DINO projection needs timm>=0.9 (pip install 'sigma-video[models]')") from exc
        self.tube_size = _as_tube(tube_size)
        if self.tube_size[1:] != (16, 16):
            raise ValueError(f"the DINO projection needs 16×16 tubes (DINO's patch), got tube_size {self.tube_size}")
        state = None
        if weights is None:
            if not allow_random_weights:
                raise ValueError("DINOProjection needs weights=PATH to a local DINO ViT-S/16 or ViT-B/16 checkpoint "
                                 "(.pth or .safetensors); random weights only with allow_random_weights=True")
        else:
            state = read_dino_state_dict(weights)
            width = state["cls_token"].shape[-1] if "cls_token" in state else None
            inferred = {384: "small", 768: "base"}.get(width)
            if inferred is None:
                raise ValueError(f"{weights} is not a DINO ViT-S/16 or ViT-B/16 checkpoint (no cls_token of width "
                                 f"384 or 768; first keys: {list(state)[:5]})")
            if arch is not None and arch != inferred:
                raise ValueError(f"arch={arch!r} but {weights} holds a ViT-{inferred} (width {width})")
            arch = inferred
        arch = arch or "small"
        if arch not in DINO_ARCHS:
            raise ValueError(f"arch must be one of {sorted(DINO_ARCHS)}, got {arch!r}")
        name, self.out_dim = DINO_ARCHS[arch]
        self.arch, self.eps = arch, eps
        # dynamic_img_size: timm resamples the 224² position table for other clip sizes on the fly.
        if state is None:
            self.model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
        else:  # built on the meta device: no random init only to be overwritten
            with torch.device("meta"):
                self.model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
            if "pos_embed" in state and state["pos_embed"].shape != self.model.pos_embed.shape:
                from timm.layers import resample_abs_pos_embed
                state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(self.model.patch_embed.grid_size),
                                                            num_prefix_tokens=self.model.num_prefix_tokens)
            result = self.model.load_state_dict(state, strict=False, assign=True)
            if result.missing_keys or result.unexpected_keys:
                raise ValueError(f"{weights} does not match timm's DINO ViT-{arch}/16: missing keys "
                                 f"{result.missing_keys[:8]}, unexpected keys {result.unexpected_keys[:8]}")
            left = [n for n, t in [*self.model.named_parameters(), *self.model.named_buffers()] if t.is_meta]
            if left:
                raise ValueError(f"{weights} leaves {left[:5]} of the DINO ViT-{arch}/16 unset")
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode=True):
        super().train(mode)
        self.model.eval()  # frozen: dropout/drop path never on
        return self

    @torch.no_grad()
    def features(self, video):
        """Standardised DINO tokens of every tube, (B, N, D) in (t, h, w) order."""
        if video.dim() != 5:
            raise ValueError(f"video must be (B, C, T, H, W), got shape {tuple(video.shape)}")
        gt, gh, gw = tube_grid(video.shape, self.tube_size)
        b, c = video.shape[:2]
        frames = video[:, :, :: self.tube_size[0]].transpose(1, 2).reshape(b * gt, c, *video.shape[-2:])
        tokens = self.model.forward_features(frames)[:, self.model.num_prefix_tokens:]  # (B·T', H'·W', D)
        tokens = tokens.reshape(b, gt * gh * gw, -1)
        mean = tokens.mean(dim=1, keepdim=True)
        std = tokens.var(dim=1, unbiased=True, keepdim=True).sqrt()
        return (tokens - mean) / (std + self.eps)

    def forward(self, video, mask):
        feats = self.features(video)
        check_mask(mask, feats.shape[0], feats.shape[1])
        return gather_tokens(feats, mask)


PROJECTIONS = {"mlp": MLPProjection, "dino": DINOProjection, "pixels": PixelProjection}


def create_projection(kind, out_dim=None, tube_size=(2, 16, 16), **kwargs):
    """Build a projection by kind: "mlp" (out_dim default 256), "dino" (out_dim is 384 or 768, set by the
    weights), "pixels" (out_dim = 3·pt·ph·pw). Extra kwargs go to the class (MLPProjection,
    DINOProjection, PixelProjection). An out_dim that the kind cannot produce is an error."""
    if kind not in PROJECTIONS:
        raise ValueError(f"kind must be one of {sorted(PROJECTIONS)}, got {kind!r}")
    if kind == "mlp":
        return MLPProjection(tube_size=tube_size, out_dim=256 if out_dim is None else out_dim, **kwargs)
    proj = PROJECTIONS[kind](tube_size=tube_size, **kwargs)
    if out_dim is not None and out_dim != proj.out_dim:
        raise ValueError(f"out_dim={out_dim} but the {kind!r} projection produces D={proj.out_dim}")
    return proj
