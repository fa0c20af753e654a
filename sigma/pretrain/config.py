"""Pretraining configs: the schema `PretrainConfig` (every key, its type, default and allowed values)
and the shipped YAML configs, merged by `sigma.engine.config` (OmegaConf).

A YAML config names only what it changes; `inherit: NAME_OR_PATH` starts from another config
(default: `default`, the schema's defaults). `load_config` returns a plain dict. Keys under a
`kwargs` mapping are passed through to the model / projection factories and are checked there.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from sigma.engine.config import (
    ConfigError,
    check_environment,
    compose,
    config_changes,
    device_problem,
    dump_config,
    existing_path,
    inherit_chain,
    listed_changes,
    override_layer,
    parse_override,
    section,
    setting,
    shipped_configs,
)

CONFIG_PACKAGE = "sigma.pretrain.configs"
POSITIVE = {"minimum": 1}
# NumPy takes seeds in [0, 2**32)
SEED = {"minimum": 0, "maximum": 2**32 - 1}


@dataclass
class ModelConfig:
    name: str = setting("sigma_vit_base_patch16", help="a sigma.models name")
    kwargs: Dict[str, Any] = setting({}, help="further create_model overrides (depth=, embed_dim=, ... as the "
                                              "model accepts)")


@dataclass
class DataConfig:
    root: Optional[str] = setting(None, help="folder the list's paths are relative to (default: the list's folder)",
                                  check=existing_path)
    num_frames: int = setting(16, **POSITIVE)
    sampling_rate: int = setting(4, help="4 for Kinetics, 2 for SSv2", **POSITIVE)
    img_size: int = setting(224, **POSITIVE)
    patch_size: int = setting(16, **POSITIVE)
    tubelet_size: int = setting(2, **POSITIVE)
    mask_ratio: float = setting(0.9, above=0.0, below=1.0, help="share of tubes masked (some of each kind)")
    scales: List[float] = setting([1.0, 0.875, 0.75, 0.66], above=0.0, maximum=1.0,
                                  help="scales of the random resized crop")
    flip: bool = setting(True, help="false for SSv2 (left/right carries the label)")
    reader: str = setting("auto", help="video reader (sigma.data)")
    num_workers: int = setting(8, minimum=0)
    pin_memory: bool = setting(True)


@dataclass
class ProjectionConfig:
    kind: str = setting("mlp", choices=("mlp", "dino", "pixels"), help="pixels only with objective.name=pixel")
    out_dim: int = setting(256, help="D: width of the decoder head and of the projection features", **POSITIVE)
    kwargs: Dict[str, Any] = setting({}, help="e.g. {weights: /path/dino_vitb16.pth} for dino, "
                                              "{hidden_dims: [...]} for mlp")


@dataclass
class ObjectiveConfig:
    name: str = setting("sigma", choices=("sigma", "pixel", "l2"),
                        help="sigma (SinkhornSwapLoss) | pixel (VideoMAE normalised pixels) | l2")
    num_prototypes: int = setting(3000, **POSITIVE)
    epsilon: float = setting(0.05, minimum=1e-3)
    sinkhorn_iterations: int = setting(10, **POSITIVE)
    temperature: float = setting(0.1, minimum=1e-6)
    targets: str = setting("hard", choices=("hard", "soft"))
    backend: str = setting("auto", help="sigma_kernels backend")


@dataclass
class OptimConfig:
    epochs: int = setting(800, **POSITIVE)
    batch_size: int = setting(16, help="clips per process and micro-batch", **POSITIVE)
    accum_steps: int = setting(1, help="micro-batches per optimizer step (Sinkhorn equipartition is per "
                                       "micro-batch)", **POSITIVE)
    base_lr: float = setting(1.5e-4, above=0.0, help="lr = base_lr * global_batch / 256, global_batch = "
                                                       "batch_size * accum_steps * world")
    min_lr: float = setting(1.0e-5, minimum=0.0)
    warmup_lr: float = setting(0.0, minimum=0.0)
    warmup_epochs: float = setting(40, minimum=0.0)
    weight_decay: float = setting(0.05, minimum=0.0)
    betas: List[float] = setting([0.9, 0.95], length=2, minimum=0.0, below=1.0)
    clip_grad: Optional[float] = setting(None, above=0.0, help="max gradient norm, or null for none")
    max_steps: Optional[int] = setting(None, help="stop after this many optimizer steps (the schedule still "
                                                  "spans `epochs`)", **POSITIVE)


@dataclass
class LogConfig:
    every: int = setting(20, help="steps between metrics.csv rows", **POSITIVE)
    stats_every: int = setting(100, help="steps between collapse measures (effective rank needs an SVD)",
                               **POSITIVE)
    tensorboard: bool = setting(True, help="also write DIR/tensorboard when tensorboard is installed")


@dataclass
class CheckpointConfig:
    every: int = setting(1000, help="steps between checkpoints (one is always written at the end)", **POSITIVE)
    keep: Optional[int] = setting(3, help="newest numbered checkpoints kept (null keeps all)", **POSITIVE)


@dataclass
class PretrainConfig:
    """Every key the pretraining CLI understands, with its default."""
    seed: int = setting(0, **SEED)
    device: str = setting("auto", choices=("auto", "cpu", "cuda"), check=device_problem,
                          help="auto: cuda:LOCAL_RANK when CUDA is available, else cpu")
    amp: str = setting("auto", choices=("auto", "fp16", "bf16", "none"),
                       help="auto: fp16 + grad scaler on CUDA (as released), fp32 on CPU")
    model: ModelConfig = section(ModelConfig)
    data: DataConfig = section(DataConfig)
    projection: ProjectionConfig = section(ProjectionConfig)
    objective: ObjectiveConfig = section(ObjectiveConfig)
    optim: OptimConfig = section(OptimConfig)
    log: LogConfig = section(LogConfig)
    checkpoint: CheckpointConfig = section(CheckpointConfig)


def available_configs():
    """Names of the configs shipped with the package (usable as `--config NAME`); `default` is the
    schema's defaults."""
    return shipped_configs(CONFIG_PACKAGE)


def load_config(name_or_path="tiny", overrides=()):
    """The resolved config as a plain dict: schema defaults <- inherited configs <- this config <-
    overrides ('key=value' strings or (key, value) pairs)."""
    layers = inherit_chain(name_or_path, CONFIG_PACKAGE)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        layers.append(("override", override_layer(key, value)))
    return check_relations(compose(PretrainConfig, layers))


def check_relations(cfg):
    """Settings that must fit each other (one named line each): the clip tiles into tubes, and the
    mask leaves tubes of both kinds in every time slice (the loss trains on the masked ones, the
    encoder sees the visible ones). Returns `cfg`."""
    d = cfg["data"]
    for size, tile in (("num_frames", "tubelet_size"), ("img_size", "patch_size")):
        if d[size] % d[tile]:
            raise ConfigError(f"config key 'data.{size}' must be a multiple of data.{tile}={d[tile]}, got {d[size]}")
    per_slice = (d["img_size"] // d["patch_size"]) ** 2
    masked = int(d["mask_ratio"] * per_slice)  # as sigma.masking.num_masked_per_slice counts them
    if not 0 < masked < per_slice:
        raise ConfigError(f"config key 'data.mask_ratio' masks {masked} of the {per_slice} tubes of each time slice "
                          f"(img_size {d['img_size']} / patch_size {d['patch_size']} squared), got {d['mask_ratio']}: "
                          f"at least one must be masked and one visible")
    return cfg


def check_machine(cfg):
    """The config's checks of this machine (the device is there, data.root exists): a ConfigError
    naming the key. Run before any data is read; `load_config` alone leaves them out."""
    check_environment(PretrainConfig, cfg)


__all__ = ["ConfigError", "PretrainConfig", "available_configs", "check_machine", "check_relations",
           "config_changes", "dump_config", "listed_changes", "load_config", "parse_override"]
