"""VideoMAE-layout video ViT on timm's building blocks: encoder, decoder, pretraining model, classifier.

Conventions (see docs/models.md): clips are float (B, C, T, H, W); tubes (pt, ph, pw) = (tubelet,
patch, patch) tokens ordered (t, h, w) row-major; a mask is bool (B, N), True = masked, with the
same count per clip. The encoder runs on the visible tubes only; the decoder appends a mask token
per masked tube and predicts a D-vector for each, in token order.

Layout and init follow the original VideoMAE so that its checkpoints load key for key: a Conv3d
tube embedding, a fixed 1-D sinusoidal position table over the N tokens (computed in float64,
not stored in the state dict), pre-norm blocks (timm's `Block`) whose attention has q and v biases
but no k bias, LayerNorm eps 1e-6, xavier-uniform linears with zero biases, a truncated-normal
mask token.
"""
import math
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import register_model
from timm.models.vision_transformer import Attention, Block
from torch.utils.checkpoint import checkpoint

from .tubes import check_mask, gather_tokens


def sincos_position_table(num_positions, dim, dtype=torch.float32):
    """Fixed 1-D sinusoidal table (1, num_positions, dim): angle(p, j) = p / 10000^(2·⌊j/2⌋/dim), sin on
    even and cos on odd channels. Computed in float64 then cast: in float32 the angles of the last
    positions are off by ~1e-4 at ViT-S/B sizes, which VideoMAE's and HF's numpy tables are not."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = (2 * (torch.arange(dim, dtype=torch.float64) // 2)) / dim
    angle = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
    table = torch.empty(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(dtype)[None]


class QVBiasAttention(Attention):
    """timm's Attention with VideoMAE's biases: q and v biases, none on k (parameters `q_bias`, `v_bias`).

    A k bias adds the same constant to every score of a query, which softmax removes (and its
    gradient is zero), so this equals timm's full qkv bias with its k part at zero while keeping
    VideoMAE's parameter count and key names.
    """

    def __init__(self, dim, num_heads=8, qkv_bias=False, **kwargs):
        super().__init__(dim, num_heads=num_heads, qkv_bias=False, **kwargs)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(self.attn_dim))
            self.v_bias = nn.Parameter(torch.zeros(self.attn_dim))
        else:
            self.q_bias = self.v_bias = None

    def forward(self, x, attn_mask=None, is_causal=False):
        if self.q_bias is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        b, n, _ = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.attn_drop.p if self.training else 0.0)
        x = self.norm(x.transpose(1, 2).reshape(b, n, self.attn_dim))
        return self.proj_drop(self.proj(x))


# --- configuration ---------------------------------------------------------------------------------

@dataclass
class VideoViTConfig:
    """Everything that defines a model's shapes and layers (JSON-serialisable through `to_dict()`)."""

    name: str = "sigma_vit_small_patch16"
    num_frames: int = 16
    img_size: object = 224                # int or (H, W)
    patch_size: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True                 # VideoMAE's q and v biases (no k bias)
    norm_eps: float = 1e-6                # every LayerNorm unless overridden below
    init_values: Optional[float] = None   # layer scale (None: off)
    drop_path_rate: float = 0.0           # stochastic depth, linearly increasing over the encoder blocks
    attn_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    use_mean_pooling: bool = False        # encoder: no final norm; pooled feature = fc_norm(mean of tokens)
    fc_norm: Optional[bool] = None        # LayerNorm on the pooled feature; None: when use_mean_pooling
    fc_norm_eps: Optional[float] = None
    decoder_embed_dim: int = 192
    decoder_depth: int = 4
    decoder_num_heads: int = 3
    decoder_norm_eps: Optional[float] = None  # the decoder's final norm (HF uses 1e-5 there)
    out_dim: int = 256                    # decoder head width D
    grad_checkpointing: bool = False
    num_classes: int = 0                  # classifier only
    drop_rate: float = 0.0                # classifier head dropout
    head_init_scale: float = 1e-3         # classifier head init scale

    def __post_init__(self):
        size = self.img_size
        self.img_size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
        if len(self.img_size) != 2:
            raise ValueError(f"img_size must be an int or (H, W), got {size!r}")
        t, (h, w) = self.num_frames, self.img_size
        pt, ph, pw = self.tube_size
        if min(t, h, w, pt, ph, pw) < 1 or t % pt or h % ph or w % pw:
            raise ValueError(f"num_frames × img_size = {t}×{h}×{w} must be positive and divisible by the tube "
                             f"(tubelet_size, patch_size, patch_size) = {self.tube_size}")
        for name in ("in_chans", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
                     "decoder_num_heads", "out_dim"):
            value, least = getattr(self, name), 0 if name == "decoder_depth" else 1  # a decoder may be the head alone
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        for name in ("drop_path_rate", "attn_drop_rate", "proj_drop_rate", "drop_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes!r}")
        for dim, heads, what in ((self.embed_dim, self.num_heads, ""), (self.decoder_embed_dim,
                                                                         self.decoder_num_heads, "decoder_")):
            if dim % heads:
                raise ValueError(f"{what}embed_dim={dim} must be divisible by {what}num_heads={heads}")

    @property
    def tube_size(self):
        return (self.tubelet_size, self.patch_size, self.patch_size)

    @property
    def grid_size(self):
        return (self.num_frames // self.tubelet_size, self.img_size[0] // self.patch_size,
                self.img_size[1] // self.patch_size)

    @property
    def num_tokens(self):
        return math.prod(self.grid_size)

    def to_dict(self):
        d = asdict(self)
        d["img_size"] = list(self.img_size)
        return d

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TypeError(f"unknown model config keys {unknown}; valid keys: {sorted(names)}")
        return cls(**d)


CONFIGS = {
    # CPU/tests: a pretraining step on 16×112² clips takes milliseconds.
    "sigma_vit_tiny_patch16": dict(embed_dim=192, depth=4, num_heads=3, decoder_embed_dim=96, decoder_depth=2,
                                   decoder_num_heads=3),
    "sigma_vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=192, decoder_depth=4,
                                    decoder_num_heads=3),
    "sigma_vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=384, decoder_depth=4,
                                   decoder_num_heads=6),
}


def get_config(name, **overrides):
    """The named config with overrides applied (any field of VideoViTConfig)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model name {name!r}; known: {sorted(CONFIGS)}")
    return VideoViTConfig.from_dict({**CONFIGS[name], **overrides, "name": name})


# --- modules ---------------------------------------------------------------------------------------

def _init_videomae(module):
    """VideoMAE's init: xavier-uniform linears with zero biases, LayerNorm weight 1 / bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _make_blocks(cfg, dim, depth, heads, drop_path_rate):
    rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]  # linear, 0 -> rate
    return nn.ModuleList(Block(dim, heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, proj_drop=cfg.proj_drop_rate,
                               attn_drop=cfg.attn_drop_rate, init_values=cfg.init_values, drop_path=rate,
                               norm_layer=partial(nn.LayerNorm, eps=cfg.norm_eps), attn_layer=QVBiasAttention)
                         for rate in rates)


def _run_blocks(blocks, x, use_checkpoint):
    for block in blocks:
        if use_checkpoint and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


class TubeEmbedding(nn.Module):
    """Conv3d with kernel = stride = tube_size: (B, C, T, H, W) -> (B, N, embed_dim), tokens (t, h, w)
    row-major. The module is named `proj` as in VideoMAE (`patch_embed.proj`)."""

    def __init__(self, in_chans=3, embed_dim=384, tube_size=(2, 16, 16)):
        super().__init__()
        self.tube_size = tuple(tube_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.tube_size, stride=self.tube_size)

    def forward(self, video):
        return self.proj(video).flatten(2).transpose(1, 2)


class VideoViTEncoder(nn.Module):
    """ViT encoder over the tubes of a clip (VideoMAE layout).

    forward(video, mask=None) -> (B, N_visible, C) tokens of the visible tubes (all N without a
    mask) after the final norm; forward_features(video) -> (B, N, C); forward_pooled(video) ->
    (B, C) = fc_norm(mean over tokens) (fc_norm is the identity unless use_mean_pooling).
    Build with `create_encoder(name, **overrides)` or `VideoViTEncoder(VideoViTConfig(...))`.
    """

    def __init__(self, config=None, **kwargs):
        super().__init__()
        cfg = self.config = config if config is not None else VideoViTConfig(**kwargs)
        self.embed_dim, self.num_features = cfg.embed_dim, cfg.embed_dim
        self.tube_size, self.grid_size, self.num_tokens = cfg.tube_size, cfg.grid_size, cfg.num_tokens
        self.patch_embed = TubeEmbedding(cfg.in_chans, cfg.embed_dim, cfg.tube_size)
        self.register_buffer("pos_embed", sincos_position_table(self.num_tokens, cfg.embed_dim), persistent=False)
        self.blocks = _make_blocks(cfg, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.drop_path_rate)
        fc_eps = cfg.fc_norm_eps if cfg.fc_norm_eps is not None else cfg.norm_eps
        self.norm = nn.Identity() if cfg.use_mean_pooling else nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        use_fc_norm = cfg.use_mean_pooling if cfg.fc_norm is None else cfg.fc_norm
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=fc_eps) if use_fc_norm else nn.Identity()
        self.grad_checkpointing = cfg.grad_checkpointing
        self.apply(_init_videomae)

    def set_grad_checkpointing(self, enable=True):
        self.grad_checkpointing = enable

    def check_video(self, video):
        """Raise a clear error unless video is (B, C, T, H, W) of the configured size."""
        cfg = self.config
        want = (cfg.in_chans, cfg.num_frames, *cfg.img_size)
        if not isinstance(video, torch.Tensor) or video.dim() != 5 or not video.is_floating_point():
            raise ValueError(f"video must be a float tensor (B, C, T, H, W) = (B, {', '.join(map(str, want))}), got "
                             f"{tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__}")
        if tuple(video.shape[1:]) != want:
            got = tuple(video.shape[1:])
            if video.shape[2] == cfg.in_chans and video.shape[1] != cfg.in_chans:
                raise ValueError(f"video looks like (B, T, C, H, W) (HF's layout), shape {tuple(video.shape)}; this "
                                 f"model takes (B, C, T, H, W): pass video.transpose(1, 2)")
            t, h, w = got[1:]
            pt, ph, pw = cfg.tube_size
            if t % pt or h % ph or w % pw:
                raise ValueError(f"clip (T, H, W)=({t}, {h}, {w}) is not divisible by the tube {cfg.tube_size}")
            raise ValueError(f"video must be (B, C, T, H, W) = (B, {', '.join(map(str, want))}) for this model, got "
                             f"{tuple(video.shape)}; build it with num_frames=/img_size= for other sizes (the "
                             f"position table is not stored, so the same weights load at any size)")

    def embed(self, video):
        """Tube embedding + position table: (B, N, C)."""
        self.check_video(video)
        x = self.patch_embed(video)
        return x + self.pos_embed.to(x.dtype)

    def forward(self, video, mask=None):
        x = self.embed(video)
        if mask is not None:
            check_mask(mask, x.shape[0], self.num_tokens)
            x = gather_tokens(x, ~mask)
        return self.norm(_run_blocks(self.blocks, x, self.grad_checkpointing))

    def forward_features(self, video):
        return self.forward(video)

    def forward_pooled(self, video):
        return self.fc_norm(self.forward_features(video).mean(dim=1))

    def no_weight_decay(self):
        return set()

    def group_matcher(self, coarse=False, prefix=""):
        p = prefix.replace(".", r"\.")
        return dict(stem=rf"^{p}patch_embed",
                    blocks=rf"^{p}blocks\.(\d+)" if coarse else [(rf"^{p}blocks\.(\d+)", None),
                                                                  (rf"^{p}(?:norm|fc_norm)", (99999,))])


class VideoMAEDecoder(nn.Module):
    """Decoder of the masked tubes: forward(visible (B, N_visible, C_enc), mask (B, N)) -> (B, N_mask, D).

    Visible tokens are projected to the decoder width (`encoder_to_decoder`, no bias) and get the
    decoder's own position table; every masked tube gets the learned `mask_token` + its position;
    after the blocks, the last N_mask tokens go through the final norm and the head.
    """

    def __init__(self, config):
        super().__init__()
        cfg = self.config = config
        dim = cfg.decoder_embed_dim
        self.num_tokens = cfg.num_tokens
        self.encoder_to_decoder = nn.Linear(cfg.embed_dim, dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_position_table(self.num_tokens, dim), persistent=False)
        self.blocks = _make_blocks(cfg, dim, cfg.decoder_depth, cfg.decoder_num_heads, 0.0)
        self.norm = nn.LayerNorm(dim, eps=cfg.decoder_norm_eps if cfg.decoder_norm_eps is not None else cfg.norm_eps)
        self.head = nn.Linear(dim, cfg.out_dim)
        self.grad_checkpointing = cfg.grad_checkpointing
        self.apply(_init_videomae)
        trunc_normal_(self.mask_token, std=0.02)

    def set_grad_checkpointing(self, enable=True):
        self.grad_checkpointing = enable

    def forward(self, visible, mask):
        b, n_visible = visible.shape[:2]
        check_mask(mask, b, self.num_tokens)
        x = self.encoder_to_decoder(visible)
        pos = self.pos_embed.to(x.dtype).expand(b, -1, -1)
        x = torch.cat([x + gather_tokens(pos, ~mask), self.mask_token.to(x.dtype) + gather_tokens(pos, mask)], dim=1)
        x = _run_blocks(self.blocks, x, self.grad_checkpointing)
        return self.head(self.norm(x[:, n_visible:]))


class VideoMAEPretrainModel(nn.Module):
    """Encoder on the visible tubes + decoder: forward(video (B, C, T, H, W), mask (B, N) bool) ->
    (B, N_mask, D) predictions of the masked tubes in (t, h, w) order. `.encoder`, `.decoder`,
    `.config` (VideoViTConfig; `.config.to_dict()`)."""

    def __init__(self, config=None, **kwargs):
        super().__init__()
        self.config = config if config is not None else VideoViTConfig(**kwargs)
        self.encoder = VideoViTEncoder(self.config)
        self.decoder = VideoMAEDecoder(self.config)

    @property
    def out_dim(self):
        return self.config.out_dim

    def set_grad_checkpointing(self, enable=True):
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.set_grad_checkpointing(enable)

    def forward(self, video, mask):
        if mask is None:
            raise ValueError("mask (B, N) bool, True = masked, is required by the pretraining model")
        return self.decoder(self.encoder(video, mask), mask)

    def no_weight_decay(self):
        return {"decoder.mask_token"}

    def group_matcher(self, coarse=False):
        return self.encoder.group_matcher(coarse, prefix="encoder.")


class VideoClassifier(nn.Module):
    """Fine-tuning model: encoder (use_mean_pooling: mean of tokens -> fc_norm) -> dropout -> head.

    forward(video (B, C, T, H, W)) -> (B, num_classes) logits.
    """

    def __init__(self, config=None, **kwargs):
        super().__init__()
        cfg = self.config = config if config is not None else VideoViTConfig(**kwargs)
        if cfg.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {cfg.num_classes}")
        self.num_classes = cfg.num_classes
        self.encoder = VideoViTEncoder(cfg)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight.mul_(cfg.head_init_scale)  # a small head: fine-tuning starts near uniform logits

    def set_grad_checkpointing(self, enable=True):
        self.encoder.set_grad_checkpointing(enable)

    def forward(self, video):
        return self.head(self.head_drop(self.encoder.forward_pooled(video)))

    def no_weight_decay(self):
        return set()

    def group_matcher(self, coarse=False):
        return self.encoder.group_matcher(coarse, prefix="encoder.")


# --- factories (and timm's registry) ---------------------------------------------------------------

def create_model(name="sigma_vit_small_patch16", out_dim=256, **overrides):
    """Pretraining model (encoder + decoder with a head to out_dim) of a named config; overrides are
    any VideoViTConfig field (num_frames=, img_size=, patch_size=, tubelet_size=, drop_path_rate=, ...)."""
    return VideoMAEPretrainModel(get_config(name, out_dim=out_dim, **overrides))


def create_encoder(name="sigma_vit_small_patch16", **overrides):
    """Encoder alone (VideoViTEncoder) of a named config."""
    return VideoViTEncoder(get_config(name, **overrides))


def create_classifier(name="sigma_vit_small_patch16", num_classes=400, **overrides):
    """Classification model (VideoClassifier) of a named config; mean pooling + fc_norm by default."""
    overrides.setdefault("use_mean_pooling", True)
    return VideoClassifier(get_config(name, num_classes=num_classes, **overrides))


def _timm_entry(name, pretrained, kwargs):
    if pretrained:
        raise ValueError(f"{name}: no weights can be downloaded; load a local file with sigma.models.load_model(path)")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return create_model(name, **kwargs)


@register_model
def sigma_vit_tiny_patch16(pretrained=False, **kwargs):
    """SIGMA/VideoMAE pretraining model, tiny (tests and CPU)."""
    return _timm_entry("sigma_vit_tiny_patch16", pretrained, kwargs)


@register_model
def sigma_vit_small_patch16(pretrained=False, **kwargs):
    """SIGMA/VideoMAE pretraining model, ViT-S/16 encoder, decoder 192 wide and 4 deep."""
    return _timm_entry("sigma_vit_small_patch16", pretrained, kwargs)


@register_model
def sigma_vit_base_patch16(pretrained=False, **kwargs):
    """SIGMA/VideoMAE pretraining model, ViT-B/16 encoder, decoder 384 wide and 4 deep."""
    return _timm_entry("sigma_vit_base_patch16", pretrained, kwargs)
