"""Small building blocks of a VideoMAE-style masked video model and the SIGMA MLP projection.

Shapes: a clip is (B, C, T, H, W); a tube is tube_size = (pt, ph, pw) voxels of it; the N tubes
of a clip are ordered (t, h, w) row-major (see `sigma.masking`). The encoder runs on the visible
tubes only; the decoder adds mask tokens and predicts one D-vector per masked tube.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# --- raw tubes ------------------------------------------------------------------------------

def patchify_tubes(video, tube_size=(2, 16, 16)):
    """(B, C, T, H, W) -> (B, N, pt·ph·pw, C): the voxels of every tube, channel last."""
    b, c, t, h, w = video.shape
    pt, ph, pw = tube_size
    if t % pt or h % ph or w % pw:
        raise ValueError(f"clip (T, H, W)=({t}, {h}, {w}) is not divisible by tube_size {tuple(tube_size)}")
    x = video.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # B, T', H', W', pt, ph, pw, C
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), pt * ph * pw, c)


def normalize_tubes(tubes, eps=1e-6):
    """Standardise each tube per channel over its voxels, then flatten channel-last.

    tubes: (B, N, P, C) -> (B, N, P·C); (x - mean) / (unbiased std + eps), as the SIGMA MLP
    projection (and VideoMAE's normalised pixel target) sees them.
    """
    mean = tubes.mean(dim=-2, keepdim=True)
    std = tubes.var(dim=-2, unbiased=True, keepdim=True).sqrt()
    return ((tubes - mean) / (std + eps)).flatten(-2)


def tube_pixels(video, tube_size=(2, 16, 16)):
    """Normalised raw voxels of every tube, (B, N, pt·ph·pw·C) — the projection network's input."""
    return normalize_tubes(patchify_tubes(video, tube_size))


def sincos_position_table(num_positions, dim):
    """Fixed 1-D sinusoidal position table (1, num_positions, dim), sin on even and cos on odd
    channels, wavelengths growing geometrically from 2π to 10000·2π."""
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table[None]


# --- transformer ------------------------------------------------------------------------------

class Mlp(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _gather(x, keep):
    """Rows of x (B, N, E) where keep (B, N) is True, as (B, N_keep, E) (equal counts per sample)."""
    return x[keep].reshape(x.shape[0], -1, x.shape[-1])


class TubeEmbedding(nn.Module):
    """Conv3d with kernel = stride = tube_size: (B, C, T, H, W) -> (B, N, embed_dim)."""

    def __init__(self, in_chans=3, embed_dim=384, tube_size=(2, 16, 16)):
        super().__init__()
        self.tube_size = tuple(tube_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.tube_size, stride=self.tube_size)

    def forward(self, video):
        return self.proj(video).flatten(2).transpose(1, 2)


class VideoMAEEncoder(nn.Module):
    """ViT encoder that sees only the visible tubes (mask False)."""

    def __init__(self, num_frames=16, img_size=224, tube_size=(2, 16, 16), in_chans=3, embed_dim=384, depth=12,
                 num_heads=6, mlp_ratio=4.0):
        super().__init__()
        pt, ph, pw = tube_size
        self.grid = (num_frames // pt, img_size // ph, img_size // pw)
        self.num_tokens = math.prod(self.grid)
        self.embed_dim = embed_dim
        self.tube_embed = TubeEmbedding(in_chans, embed_dim, tube_size)
        self.register_buffer("pos_embed", sincos_position_table(self.num_tokens, embed_dim), persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, video, mask):
        """video (B, C, T, H, W), mask (B, N) bool -> visible tokens (B, N_visible, embed_dim)."""
        x = self.tube_embed(video) + self.pos_embed.to(video.dtype)
        x = _gather(x, ~mask)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class VideoMAEDecoder(nn.Module):
    """Adds a learned mask token at every masked position and predicts a D-vector for it."""

    def __init__(self, num_tokens, encoder_dim=384, embed_dim=192, depth=4, num_heads=3, out_dim=256,
                 mlp_ratio=4.0):
        super().__init__()
        self.encoder_to_decoder = nn.Linear(encoder_dim, embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.register_buffer("pos_embed", sincos_position_table(num_tokens, embed_dim), persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, out_dim)

    def forward(self, visible, mask):
        """visible (B, N_visible, encoder_dim), mask (B, N) -> predictions (B, N_mask, out_dim),
        the masked tubes in (t, h, w) order."""
        x = self.encoder_to_decoder(visible)
        pos = self.pos_embed.to(x.dtype).expand(x.shape[0], -1, -1)
        n_masked = pos.shape[1] - x.shape[1]
        x = torch.cat([x + _gather(pos, ~mask), self.mask_token.to(x.dtype) + _gather(pos, mask)], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, x.shape[1] - n_masked:]))


class MaskedVideoModel(nn.Module):
    """Encoder on visible tubes + decoder predicting the masked ones: forward(video, mask) -> (B, N_mask, D)."""

    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, video, mask):
        return self.decoder(self.encoder(video, mask), mask)


class TubeProjectionMLP(nn.Module):
    """SIGMA's MLP projection network on raw normalised tubes: in_dim -> hidden... -> out_dim, GELU
    between layers (1536 -> 1024 -> 1024 -> 512 -> 256 in the released configs)."""

    def __init__(self, in_dim=1536, hidden_dims=(1024, 1024, 512), out_dim=256):
        super().__init__()
        dims = (in_dim, *hidden_dims, out_dim)
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)

    def forward(self, tubes):
        """tubes (..., in_dim), e.g. `tube_pixels(video)[mask]` -> (..., out_dim)."""
        return self.net(tubes)
