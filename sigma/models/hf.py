"""Interop with HF `transformers` VideoMAE: convert weights both ways, and SIGMA on an HF model.

Layout differences handled here: HF keeps separate query/key/value linears (key without bias) where
we keep VideoMAE's fused qkv with q/v biases; HF takes pixels as (B, T, C, H, W); HF's LayerNorm
eps comes from `config.layer_norm_eps` except the decoder's final norm and the classifier's
fc_norm, which are fixed at 1e-5; HF's encoder has a final `layernorm` only when
`use_mean_pooling=False`. HF has no layer scale and no stochastic depth.
"""
import warnings

import torch
import torch.nn as nn

from .interop import load_state_strict
from .vit import VideoClassifier, VideoMAEPretrainModel, VideoViTConfig, VideoViTEncoder

_HF_LAYER = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
             "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}


def _blocks_from_hf(state, src, dst, depth):
    out = {}
    for i in range(depth):
        s, d = f"{src}.{i}.", f"{dst}.{i}."
        for hf_name, ours in _HF_LAYER.items():
            for p in ("weight", "bias"):
                out[f"{d}{ours}.{p}"] = state.pop(f"{s}{hf_name}.{p}")
        q, k, v = (state.pop(f"{s}attention.attention.{n}.weight") for n in ("query", "key", "value"))
        out[f"{d}attn.qkv.weight"] = torch.cat([q, k, v])
        for n, ours in (("query", "q_bias"), ("value", "v_bias")):
            if f"{s}attention.attention.{n}.bias" in state:
                out[f"{d}attn.{ours}"] = state.pop(f"{s}attention.attention.{n}.bias")
        state.pop(f"{s}attention.attention.key.bias", None)  # a k bias never changes attention
    return out


def _blocks_to_hf(state, src, dst, depth):
    out = {}
    for i in range(depth):
        s, d = f"{src}.{i}.", f"{dst}.{i}."
        for hf_name, ours in _HF_LAYER.items():
            for p in ("weight", "bias"):
                out[f"{d}{hf_name}.{p}"] = state.pop(f"{s}{ours}.{p}")
        q, k, v = state.pop(f"{s}attn.qkv.weight").chunk(3)
        for n, w in (("query", q), ("key", k), ("value", v)):
            out[f"{d}attention.attention.{n}.weight"] = w
        for n, ours in (("query", "q_bias"), ("value", "v_bias")):
            if f"{s}attn.{ours}" in state:
                out[f"{d}attention.attention.{n}.bias"] = state.pop(f"{s}attn.{ours}")
    return out


_WIDTH_NAMES = {192: "sigma_vit_tiny_patch16", 384: "sigma_vit_small_patch16", 768: "sigma_vit_base_patch16"}


def _config_from_hf(c, decoder_norm_eps=1e-5, fc_norm_eps=1e-5, **extra):
    if c.hidden_act != "gelu":
        raise ValueError(f"hidden_act={c.hidden_act!r}: only 'gelu' (exact) is supported")
    return VideoViTConfig(
        name=_WIDTH_NAMES.get(c.hidden_size, "sigma_vit_small_patch16"),
        num_frames=c.num_frames, img_size=c.image_size, patch_size=c.patch_size, tubelet_size=c.tubelet_size,
        in_chans=c.num_channels, embed_dim=c.hidden_size, depth=c.num_hidden_layers, num_heads=c.num_attention_heads,
        mlp_ratio=c.intermediate_size / c.hidden_size, qkv_bias=c.qv_bias, norm_eps=c.layer_norm_eps,
        use_mean_pooling=c.use_mean_pooling, decoder_embed_dim=c.decoder_hidden_size,
        decoder_depth=c.decoder_num_hidden_layers, decoder_num_heads=c.decoder_num_attention_heads,
        decoder_norm_eps=decoder_norm_eps, fc_norm_eps=fc_norm_eps, **extra)


def _encoder_from_hf(state, prefix, depth):
    out = {"patch_embed.proj.weight": state.pop(f"{prefix}embeddings.patch_embeddings.projection.weight"),
           "patch_embed.proj.bias": state.pop(f"{prefix}embeddings.patch_embeddings.projection.bias")}
    out.update(_blocks_from_hf(state, f"{prefix}encoder.layer", "blocks", depth))
    for p in ("weight", "bias"):
        if f"{prefix}layernorm.{p}" in state:
            out[f"norm.{p}"] = state.pop(f"{prefix}layernorm.{p}")
    return out


def from_transformers(hf_model):
    """Our model with the weights of an HF VideoMAE model, equal outputs (up to float rounding):
    VideoMAEForPreTraining -> VideoMAEPretrainModel (head width 3·tubelet·patch²),
    VideoMAEModel -> VideoViTEncoder, VideoMAEForVideoClassification -> VideoClassifier.
    Sizes and LayerNorm eps come from hf_model.config."""
    import transformers as tf
    c = hf_model.config
    state = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith("position_embeddings")}  # fixed tables
    if isinstance(hf_model, tf.VideoMAEForPreTraining):
        # HF's pretraining encoder has no fc_norm; keep ours off too
        model = VideoMAEPretrainModel(_config_from_hf(c, out_dim=c.num_channels * c.tubelet_size * c.patch_size ** 2,
                                                      fc_norm=False, decoder_norm_eps=hf_model.decoder.norm.eps))
        ours = {f"encoder.{k}": v for k, v in _encoder_from_hf(state, "videomae.", c.num_hidden_layers).items()}
        ours["decoder.encoder_to_decoder.weight"] = state.pop("encoder_to_decoder.weight")
        ours["decoder.mask_token"] = state.pop("mask_token")
        ours.update(_blocks_from_hf(state, "decoder.decoder_layers", "decoder.blocks", c.decoder_num_hidden_layers))
        for p in ("weight", "bias"):
            ours[f"decoder.norm.{p}"] = state.pop(f"decoder.norm.{p}")
            ours[f"decoder.head.{p}"] = state.pop(f"decoder.head.{p}")
    elif isinstance(hf_model, tf.VideoMAEForVideoClassification):
        if not c.use_mean_pooling:
            raise ValueError("VideoMAEForVideoClassification with use_mean_pooling=False pools token 0, which a "
                             "VideoMAE encoder (no class token) has no use for; only mean pooling is supported")
        model = VideoClassifier(_config_from_hf(c, num_classes=c.num_labels, fc_norm_eps=hf_model.fc_norm.eps))
        ours = {f"encoder.{k}": v for k, v in _encoder_from_hf(state, "videomae.", c.num_hidden_layers).items()}
        for p in ("weight", "bias"):
            ours[f"encoder.fc_norm.{p}"] = state.pop(f"fc_norm.{p}")
            ours[f"head.{p}"] = state.pop(f"classifier.{p}")
    elif isinstance(hf_model, tf.VideoMAEModel):
        model = VideoViTEncoder(_config_from_hf(c, fc_norm=False))  # VideoMAEModel stops at the blocks
        ours = _encoder_from_hf(state, "", c.num_hidden_layers)
    else:
        raise TypeError(f"hf_model must be a transformers VideoMAEForPreTraining, VideoMAEModel or "
                        f"VideoMAEForVideoClassification, got {type(hf_model).__name__}")
    if state:
        raise ValueError(f"unconverted HF keys: {sorted(state)[:12]}")
    return load_state_strict(model, ours, f"{type(hf_model).__name__} weights")


def _hf_config(cfg, use_mean_pooling, **extra):
    import transformers as tf
    if cfg.init_values is not None:
        raise ValueError("HF VideoMAE has no layer scale (init_values); this model cannot be converted")
    h, w = cfg.img_size
    return tf.VideoMAEConfig(
        image_size=h if h == w else [h, w], patch_size=cfg.patch_size, num_channels=cfg.in_chans,
        num_frames=cfg.num_frames, tubelet_size=cfg.tubelet_size, hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio), hidden_act="gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, layer_norm_eps=cfg.norm_eps, qv_bias=cfg.qkv_bias,
        use_mean_pooling=use_mean_pooling, decoder_num_attention_heads=cfg.decoder_num_heads,
        decoder_hidden_size=cfg.decoder_embed_dim, decoder_num_hidden_layers=cfg.decoder_depth,
        decoder_intermediate_size=int(cfg.decoder_embed_dim * cfg.mlp_ratio), norm_pix_loss=True, **extra)


def _encoder_to_hf(state, prefix, depth):
    out = {f"{prefix}embeddings.patch_embeddings.projection.{p}": state.pop(f"patch_embed.proj.{p}")
           for p in ("weight", "bias")}
    out.update(_blocks_to_hf(state, "blocks", f"{prefix}encoder.layer", depth))
    for p in ("weight", "bias"):
        if f"norm.{p}" in state:
            out[f"{prefix}layernorm.{p}"] = state.pop(f"norm.{p}")
    return out


def _set_eps(module, eps):
    module.eps = eps  # HF fixes this norm's eps at 1e-5 in code; set ours on the instance


def to_transformers(model):
    """An HF `transformers` model with our weights and equal outputs (HF takes (B, T, C, H, W) pixels):
    VideoMAEPretrainModel -> VideoMAEForPreTraining when its head is pixel-wide (HF fixes that head at
    C·tubelet·patch²), else VideoMAEModel (the encoder alone, with a warning); VideoViTEncoder ->
    VideoMAEModel; VideoClassifier -> VideoMAEForVideoClassification.

    HF's config cannot express the eps of the decoder's final norm or of fc_norm (1e-5 in its code):
    when ours differ they are set on the returned modules, and an HF save/reload returns to 1e-5
    (a relative change of about 1e-5 in those outputs)."""
    import transformers as tf
    cfg = model.config
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if isinstance(model, VideoMAEPretrainModel):
        pixel_width = cfg.in_chans * cfg.tubelet_size * cfg.patch_size ** 2
        if cfg.out_dim != pixel_width:
            warnings.warn(f"head width {cfg.out_dim} is not HF's pixel head ({pixel_width}): "
                          f"returning VideoMAEModel (the encoder); use hf_masked_predictions with set_hf_head for "
                          f"the decoder", stacklevel=2)
            return to_transformers(model.encoder)
        hf = tf.VideoMAEForPreTraining(_hf_config(cfg, use_mean_pooling=cfg.use_mean_pooling))
        enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        out = _encoder_to_hf(enc, "videomae.", cfg.depth)
        out["encoder_to_decoder.weight"] = state.pop("decoder.encoder_to_decoder.weight")
        out["mask_token"] = state.pop("decoder.mask_token")
        out.update(_blocks_to_hf(state, "decoder.blocks", "decoder.decoder_layers", cfg.decoder_depth))
        for p in ("weight", "bias"):
            out[f"decoder.norm.{p}"] = state.pop(f"decoder.norm.{p}")
            out[f"decoder.head.{p}"] = state.pop(f"decoder.head.{p}")
        if "fc_norm.weight" in enc:
            raise ValueError("HF's pretraining model has no fc_norm; build ours with fc_norm=False")
        left = sorted(enc) + [k for k in state if not k.startswith("encoder.")]
        _set_eps(hf.decoder.norm, model.decoder.norm.eps)
    elif isinstance(model, VideoClassifier):
        if not cfg.use_mean_pooling:
            raise ValueError("HF's classifier without mean pooling reads token 0; convert a mean-pooling classifier")
        hf = tf.VideoMAEForVideoClassification(_hf_config(cfg, use_mean_pooling=True, num_labels=cfg.num_classes))
        enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        out = _encoder_to_hf(enc, "videomae.", cfg.depth)
        for p in ("weight", "bias"):
            out[f"fc_norm.{p}"] = enc.pop(f"fc_norm.{p}")
            out[f"classifier.{p}"] = state.pop(f"head.{p}")
        left = sorted(enc) + [k for k in state if not k.startswith("encoder.")]
        _set_eps(hf.fc_norm, model.encoder.fc_norm.eps)
    elif isinstance(model, VideoViTEncoder):
        hf = tf.VideoMAEModel(_hf_config(cfg, use_mean_pooling=cfg.use_mean_pooling))
        out = _encoder_to_hf(state, "", cfg.depth)
        if "fc_norm.weight" in state:
            state = {k: v for k, v in state.items() if not k.startswith("fc_norm.")}  # HF's model has none
            warnings.warn("VideoMAEModel has no fc_norm: the encoder's fc_norm is not converted", stacklevel=2)
        left = sorted(state)
    else:
        raise TypeError(f"model must be a VideoMAEPretrainModel, VideoViTEncoder or VideoClassifier, got "
                        f"{type(model).__name__}")
    if left:
        raise ValueError(f"unconverted keys: {left[:12]}")
    hf_state = hf.state_dict()
    out.update({k: hf_state[k] for k in hf_state if k.endswith("position_embeddings")})
    load_state_strict(hf, out, f"{type(model).__name__} weights")
    return hf.eval()


# --- SIGMA on an HF model ------------------------------------------------------------------------

def set_hf_head(hf_model, out_dim):
    """Replace the pixel head of an HF VideoMAEForPreTraining with a fresh Linear(decoder width, out_dim)
    (xavier-uniform, zero bias, as VideoMAE initialises its head); returns the new head."""
    head = nn.Linear(hf_model.config.decoder_hidden_size, out_dim)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    hf_model.decoder.head = head.to(hf_model.decoder.norm.weight.device)
    return head


def hf_masked_predictions(hf_model, pixel_values, bool_masked_pos):
    """Predictions of an HF VideoMAEForPreTraining for the masked tubes, (B, N_mask, D), without its
    pixel loss (which fails for a head that is not pixel-wide): HF's own encoder, decoder blocks,
    norm and head (replace the head with `set_hf_head(hf_model, D)`), run as HF's forward runs them.

    pixel_values: (B, T, C, H, W) (HF's layout); bool_masked_pos: bool (B, N), True = masked, the same
    count per clip. Rows are the masked tubes in (t, h, w) order, as `sigma.models` models return them.
    """
    if pixel_values.dim() != 5 or pixel_values.shape[2] != hf_model.config.num_channels:
        raise ValueError(f"pixel_values must be (B, T, C, H, W) with C={hf_model.config.num_channels} (HF's layout), "
                         f"got {tuple(pixel_values.shape)}")
    from .tubes import check_mask, gather_tokens
    b = pixel_values.shape[0]
    n = hf_model.position_embeddings.shape[1]
    check_mask(bool_masked_pos, b, n, "bool_masked_pos")
    x = hf_model.videomae(pixel_values, bool_masked_pos=bool_masked_pos).last_hidden_state
    x = hf_model.encoder_to_decoder(x)
    pos = hf_model.position_embeddings.to(device=x.device, dtype=x.dtype).expand(b, -1, -1)
    n_visible = x.shape[1]
    x = torch.cat([x + gather_tokens(pos, ~bool_masked_pos),
                   hf_model.mask_token.to(x.dtype) + gather_tokens(pos, bool_masked_pos)], dim=1)
    for layer in hf_model.decoder.decoder_layers:
        out = layer(x)
        x = out[0] if isinstance(out, tuple) else out  # older transformers return a tuple
    return hf_model.decoder.head(hf_model.decoder.norm(x[:, n_visible:]))
