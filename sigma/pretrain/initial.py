"""The untrained encoder a pretraining run starts from, as an evaluation checkpoint (the floor every
probe is compared with).

    python -m sigma.pretrain.initial --config CONFIG --seed N --output-dir DIR

writes DIR/model.safetensors + DIR/config.json (`sigma.models.save_pretrained`), which
`python -m sigma.evaluate TASK --checkpoint DIR` reads like any exported encoder."""
import argparse
import random
import sys

import numpy as np
import torch

from .config import ConfigError, load_config


def initial_encoder(config, seed):
    """The encoder (eval mode) a `sigma.pretrain` run of `config` (a shipped config name or a YAML
    file, e.g. a run's config.yaml) with seed `seed` starts from: seeded as the trainer seeds, the
    projection and the model built in the trainer's order (`build_module`). The caller's Python,
    NumPy and torch random streams are left as they were."""
    from sigma.engine.seeding import seed_everything
    from sigma.models import create_model, create_projection

    from .trainer import build_module

    try:
        cfg = load_config(config, [("seed", seed)])
    except (ConfigError, FileNotFoundError) as exc:
        raise ConfigError(f"--config {config!r}: not a pretraining config ({exc})") from exc
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        module, *_ = build_module(cfg, create_model, create_projection)
    random.setstate(py_state)
    np.random.set_state(np_state)
    return module.model.encoder.eval()


def export_initial_encoder(config, seed, folder):
    """Write `initial_encoder(config, seed)` to FOLDER (model.safetensors + config.json); returns
    FOLDER as a str."""
    from sigma.models import save_pretrained

    save_pretrained(initial_encoder(config, seed), folder)
    return str(folder)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sigma.pretrain.initial",
                                description="Export the untrained encoder a pretraining run of CONFIG and SEED "
                                            "starts from, for `sigma.evaluate --checkpoint DIR`.")
    p.add_argument("--config", required=True, help="a shipped config name or a YAML file (e.g. a run's config.yaml)")
    p.add_argument("--seed", type=int, required=True, help="the pretraining seed")
    p.add_argument("--output-dir", required=True, help="folder for model.safetensors and config.json")
    args = p.parse_args(argv)
    if not 0 <= args.seed < 2**32:
        p.error(f"--seed must be in [0, 2**32), got {args.seed}")
    try:
        print(export_initial_encoder(args.config, args.seed, args.output_dir))
    except ConfigError as exc:
        p.error(str(exc).splitlines()[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
