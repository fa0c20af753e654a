"""Weights interop: HF `transformers` VideoMAE (both directions), original VideoMAE `.pth` files, our
safetensors export, and the pretraining checkpoints written by `sigma.pretrain`.

Every load is strict: a key the target does not have, or a target key the file does not fill, is
an error listing both (the only tolerated difference is a `pos_embed` table, which is fixed and
recomputed). Nothing is unpickled beyond tensors and argparse.Namespace (`safe_torch_load`).
"""
import argparse
import functools
import json
import re
import warnings
from pathlib import Path

import torch

from sigma.engine.files import MODELS_FORMAT as FORMAT
from sigma.engine.files import PRETRAIN_FORMAT, atomic_write, atomic_write_text, safe_torch_load

from .vit import VideoClassifier, VideoMAEPretrainModel, VideoViTConfig, VideoViTEncoder, sincos_position_table

KINDS = {"pretrain": VideoMAEPretrainModel, "encoder": VideoViTEncoder, "classifier": VideoClassifier}


def _kind(model):
    for kind, cls in KINDS.items():
        if isinstance(model, cls):
            return kind
    raise TypeError(f"model must be a VideoMAEPretrainModel, VideoViTEncoder or VideoClassifier, got "
                    f"{type(model).__name__}")


def load_state_strict(module, state, source="state dict"):
    """module.load_state_dict(state, strict=True) with a readable report of what does not match."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def show(keys):
            return ", ".join(keys[:12]) + (f" ... ({len(keys)} in all)" if len(keys) > 12 else "") if keys else "none"
        raise ValueError(f"{source} does not match {type(module).__name__}:\n  missing keys: {show(missing)}\n"
                         f"  unexpected keys: {show(unexpected)}\n  shape mismatches: {show(shapes)}")
    module.load_state_dict(state, strict=True)
    return module


# --- our own format -----------------------------------------------------------------------------

def save_pretrained(model, path):
    """Write `model` (pretraining model, encoder or classifier) as PATH/model.safetensors (the config
    also in its metadata) + PATH/config.json. Files are written atomically."""
    from safetensors.torch import save_file
    path = Path(path)
    meta = {"format": FORMAT, "kind": _kind(model), "config": model.config.to_dict()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"sigma": json.dumps(meta)}))
    atomic_write_text(path / "config.json", json.dumps(meta, indent=2) + "\n")
    return path


def _read_ours(path):
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no model.safetensors in {path}")
    with safe_open(str(file), "pt") as f:
        meta = (f.metadata() or {}).get("sigma")
    if meta is None and (file.parent / "config.json").is_file():
        meta = (file.parent / "config.json").read_text()
    if meta is None:
        raise ValueError(f"{file} has no sigma config (neither in its metadata nor a config.json next to it)")
    meta = json.loads(meta)
    if meta.get("format") != FORMAT or meta.get("kind") not in KINDS:
        raise ValueError(f"{file}: unknown format {meta.get('format')!r} / kind {meta.get('kind')!r}")
    return meta, load_file(str(file))


def load_pretrained(path, **overrides):
    """A model written by `save_pretrained` (a directory or its .safetensors file); overrides change
    config fields that do not change the weights' shapes (num_frames=, img_size=, drop_path_rate=...)."""
    meta, state = _read_ours(path)
    config = VideoViTConfig.from_dict({**meta["config"], **overrides})
    return load_state_strict(KINDS[meta["kind"]](config), state, str(path))


# --- original VideoMAE layout --------------------------------------------------------------------

def _videomae_key(key):
    """Original VideoMAE key -> ours (layer scale gamma_1/gamma_2 -> timm's ls1.gamma/ls2.gamma)."""
    key = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", key)
    if key in ("encoder_to_decoder.weight", "mask_token"):
        return "decoder." + key
    return key


def _ours_to_videomae_key(key):
    key = re.sub(r"\.ls([12])\.gamma$", r".gamma_\1", key)
    return key[len("decoder."):] if key in ("decoder.encoder_to_decoder.weight", "decoder.mask_token") else key


def _drop_position_tables(state, source):
    """VideoMAE's fixed sinusoidal tables are recomputed here; a stored one must be that table."""
    out = {}
    for k, v in state.items():
        if k.split(".")[-1] == "pos_embed":
            want = sincos_position_table(v.shape[-2], v.shape[-1])
            if v.shape[-2:] != want.shape[-2:] or (v.float().reshape(want.shape) - want).abs().max() > 1e-3:
                raise ValueError(f"{source}: {k} is not the fixed sinusoidal table (learned position embeddings "
                                 f"are not supported)")
            continue
        out[k] = v
    return out


def _infer_config(state, prefix, overrides, args=None, source="checkpoint", decoder=True):
    """Config fields readable from tensor shapes, plus the clip size from VideoMAE's `args`
    (num_frames, input_size) when the file has them. Head counts are in no VideoMAE file: 64-wide
    heads are assumed (VideoMAE's ViT-S/B/L; not its ViT-H, 80 wide) and, unless given in
    `overrides`, a warning says which values were assumed, as it does for a clip size the file
    cannot tell (defaults 16×224²). decoder=False: the decoder's fields do not matter (no warning)."""
    w = state.get(prefix + "patch_embed.proj.weight")
    if w is None or w.dim() != 5:
        raise ValueError(f"no Conv3d tube embedding ({prefix}patch_embed.proj.weight) in the checkpoint: not a "
                         f"VideoMAE/SIGMA video model")
    c, chans, pt, ph, pw = w.shape
    if ph != pw:
        raise ValueError(f"non-square patches {ph}×{pw} are not supported")
    depth = len({int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))})
    cfg = dict(embed_dim=c, in_chans=chans, tubelet_size=pt, patch_size=ph, depth=depth, num_heads=max(c // 64, 1),
               mlp_ratio=state[prefix + "blocks.0.mlp.fc1.weight"].shape[0] / c,
               qkv_bias=prefix + "blocks.0.attn.q_bias" in state,
               init_values=1.0 if prefix + "blocks.0.ls1.gamma" in state else None,
               use_mean_pooling=prefix + "fc_norm.weight" in state)
    unread = ["num_heads"]
    if "decoder.head.weight" in state:
        out_dim, d = state["decoder.head.weight"].shape
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"decoder\.blocks\.(\d+)\.", k))}
        cfg.update(decoder_embed_dim=d, decoder_num_heads=max(d // 64, 1), out_dim=out_dim, decoder_depth=len(blocks))
        if decoder:
            unread.append("decoder_num_heads")
    for field, arg in (("num_frames", "num_frames"), ("img_size", "input_size")):
        if isinstance(getattr(args, arg, None), int):
            cfg[field] = getattr(args, arg)
        else:
            unread.append(field)
            cfg[field] = VideoViTConfig.num_frames if field == "num_frames" else VideoViTConfig.img_size
    assumed = [f"{field}={cfg[field]}" for field in unread if field not in overrides]
    if assumed:
        why = "heads 64 wide" + (", VideoMAE's clip 16×224²" if any(a.startswith(("num_frames", "img_size"))
                                                                    for a in assumed) else "")
        warnings.warn(f"{source} does not store {', '.join(f.split('=')[0] for f in assumed)}: assumed "
                      f"{', '.join(assumed)} ({why}); pass the right values as "
                      f"keyword arguments (load_model(path, {assumed[0].split('=')[0]}=...)) if the model was "
                      f"built otherwise", stacklevel=3)
    cfg.update(overrides)
    return cfg


def _named(cfg):
    """A config dict with the name of the named config it matches in width (for readability only)."""
    names = {192: "sigma_vit_tiny_patch16", 384: "sigma_vit_small_patch16", 768: "sigma_vit_base_patch16"}
    return {"name": names.get(cfg["embed_dim"], "sigma_vit_small_patch16"), **cfg}


def _videomae_args(obj):
    """The argparse.Namespace VideoMAE's training and fine-tuning scripts store as `args` (or None)."""
    args = obj.get("args") if isinstance(obj, dict) else None
    return args if isinstance(args, argparse.Namespace) else None


def _videomae_state(obj, source):
    """The state dict inside an original VideoMAE/SIGMA checkpoint (`model` or `module` entry, or bare).
    The other entries of a training checkpoint (optimizer, scaler, epoch, args, SIGMA's projection
    and criterion) are not needed to rebuild the network and are left alone."""
    if isinstance(obj, dict):
        for key in ("model", "module", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source} does not hold a state dict of tensors")
    return _drop_position_tables({_videomae_key(re.sub(r"^module\.", "", k)): v for k, v in obj.items()}, source)


def _classifier_from_finetune_state(state, source, num_classes=None, args=None, **overrides):
    cfg = _infer_config(state, "", overrides, args, source)
    cfg.setdefault("num_classes", state["head.weight"].shape[0] if "head.weight" in state else num_classes)
    model = VideoClassifier(VideoViTConfig(**_named(cfg)))
    return load_state_strict(model, {("encoder." + k if not k.startswith("head.") else k): v
                                     for k, v in state.items()}, source)


def to_videomae_state_dict(model):
    """Our model's state dict in the original VideoMAE layout (pretraining model: encoder./decoder./
    encoder_to_decoder/mask_token; classifier: fine-tuning layout; encoder: fine-tuning layout without head)."""
    state = model.state_dict()
    if isinstance(model, VideoMAEPretrainModel):
        return {_ours_to_videomae_key(k): v for k, v in state.items()}
    if isinstance(model, VideoClassifier):
        return {_ours_to_videomae_key(k[len("encoder."):] if k.startswith("encoder.") else k): v
                for k, v in state.items()}
    return {_ours_to_videomae_key(k): v for k, v in state.items()}


# --- reading any supported file ------------------------------------------------------------------

def _read_any(path):
    """('ours', meta, state) | ('pretrain', ckpt, None) | ('videomae', state, args or None) for a supported path."""
    path = Path(path)
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return ("ours", *_read_ours(path))
        for candidate in (path / "checkpoints" / "last.pt", path / "last.pt"):
            if candidate.is_file():
                return _read_any(candidate)
        raise FileNotFoundError(f"{path} holds neither model.safetensors nor checkpoints/last.pt")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return ("ours", *_read_ours(path))
    obj = safe_torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == PRETRAIN_FORMAT:
        for key in ("model_config", "model"):
            if not isinstance(obj.get(key), dict):
                raise ValueError(f"cannot read {path} as a sigma.pretrain checkpoint: its {key!r} entry is "
                                 f"{type(obj.get(key)).__name__}, not a dict")
        return ("pretrain", obj, None)
    return ("videomae", _videomae_state(obj, str(path)), _videomae_args(obj))


def _readable(loader):
    """`loader` with the errors a malformed file raises inside the reading code (a missing entry, an
    entry of the wrong type, unreadable safetensors metadata) turned into one ValueError naming the
    file; errors that already name it (ValueError, FileNotFoundError) pass unchanged."""
    @functools.wraps(loader)
    def read(path, *args, **kwargs):
        try:
            return loader(path, *args, **kwargs)
        except (KeyError, AttributeError, IndexError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {path} as a video model checkpoint: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            if type(exc).__name__ != "SafetensorError":  # safetensors' own error does not name the file
                raise
            raise ValueError(f"cannot read {path}: damaged or not a safetensors file ({exc})") from exc
    return read


@_readable
def load_model(path, **overrides):
    """The pretraining model (encoder + decoder) from: our safetensors export, a `sigma.pretrain`
    checkpoint (file, or run directory with checkpoints/last.pt), or an original VideoMAE/SIGMA
    pretraining `.pth`. Overrides set config fields the file cannot tell (num_frames=, img_size=)."""
    kind, a, b = _read_any(path)
    if kind == "ours":
        if a["kind"] != "pretrain":
            raise ValueError(f"{path} holds a {a['kind']}, not a pretraining model (use load_encoder)")
        return load_state_strict(VideoMAEPretrainModel(VideoViTConfig.from_dict({**a["config"], **overrides})), b,
                                 str(path))
    if kind == "pretrain":
        from .vit import create_model
        cfg = dict(a["model_config"])
        return load_state_strict(create_model(**{**cfg, **overrides}), a["model"], str(path))
    if "decoder.head.weight" not in a:
        raise ValueError(f"{path} holds no decoder (a fine-tuning checkpoint?): use load_encoder or load_classifier")
    cfg = _infer_config(a, "encoder.", overrides, b, str(path))
    return load_state_strict(VideoMAEPretrainModel(VideoViTConfig(**_named(cfg))), a, str(path))


@_readable
def load_encoder(path, **overrides):
    """The encoder (VideoViTEncoder) of any checkpoint `load_model` reads, or of an original VideoMAE
    fine-tuning `.pth` / our exported encoder or classifier.

    With use_mean_pooling=True on a pretraining checkpoint, the encoder is built for fine-tuning as
    VideoMAE does it: the pretrained final norm is dropped and a fresh fc_norm applies to the pooled
    feature (reported with a warning).
    """
    kind, a, b = _read_any(path)
    if kind == "ours":
        cfg, state = a["config"], b
        prefix = "" if a["kind"] == "encoder" else "encoder."
    elif kind == "pretrain":
        from .vit import get_config
        model_cfg = dict(a["model_config"])
        cfg, state, prefix = get_config(**model_cfg).to_dict(), a["model"], "encoder."
    else:
        state = a
        prefix = "encoder." if any(k.startswith("encoder.") for k in state) else ""
        cfg = _named(_infer_config(state, prefix, overrides, b, str(path), decoder=False))
    encoder_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) or not prefix}
    encoder_state = {k: v for k, v in encoder_state.items() if not k.startswith("head.")}
    cfg = VideoViTConfig.from_dict({**cfg, **overrides})
    encoder = VideoViTEncoder(cfg)
    own = encoder.state_dict()
    if "fc_norm.weight" in own and "fc_norm.weight" not in encoder_state and "norm.weight" in encoder_state \
            and "norm.weight" not in own:
        warnings.warn(f"{path}: use_mean_pooling — the pretrained final norm is dropped and fc_norm starts fresh "
                      f"(as VideoMAE fine-tuning does)", stacklevel=2)
        encoder_state = {k: v for k, v in encoder_state.items() if not k.startswith("norm.")}
        encoder_state.update({k: v for k, v in own.items() if k.startswith("fc_norm.")})
    return load_state_strict(encoder, encoder_state, str(path))


@_readable
def load_classifier(path, num_classes, **overrides):
    """A VideoClassifier (mean pooling + fc_norm + new head of num_classes) whose encoder comes from
    any checkpoint `load_encoder` reads; an original VideoMAE fine-tuning file with a head of that
    size keeps its head."""
    kind, a, b = _read_any(path)
    if kind == "videomae" and "head.weight" in a and a["head.weight"].shape[0] == num_classes:
        return _classifier_from_finetune_state(a, str(path), args=b, **overrides)
    overrides.setdefault("use_mean_pooling", True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*use_mean_pooling")  # a classifier is that fine-tuning setup
        encoder = load_encoder(path, **overrides)
    model = VideoClassifier(VideoViTConfig.from_dict({**encoder.config.to_dict(), "num_classes": num_classes}))
    model.encoder.load_state_dict(encoder.state_dict())
    return model
