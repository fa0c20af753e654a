"""SIGMA pretraining: configs, the training loop and its checkpoints.

    python -m sigma.pretrain --config tiny --data DATA/train.txt --output-dir runs/tiny

`load_config(name_or_path, overrides)` resolves a shipped or user YAML config; `train(cfg, data,
output_dir, resume=None, overwrite=False)` runs it (one process, or one per device under torchrun). The
checkpoint format is described in docs/pretraining.md.
"""
from .config import ConfigError, available_configs, load_config


def train(cfg, data, output_dir, resume=None, argv=None, overwrite=False):
    """See `sigma.pretrain.trainer.train` (imported lazily: it needs timm)."""
    from .trainer import train as _train
    return _train(cfg, data, output_dir, resume=resume, argv=argv, overwrite=overwrite)


__all__ = ["ConfigError", "available_configs", "load_config", "train"]
