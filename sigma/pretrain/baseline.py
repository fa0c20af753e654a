"""The pixel objective's loss for predictors that learn nothing, to read a pixel curve against.

    python -m sigma.pretrain.baseline --config tiny --data OUT/train.txt [--clips N] [--output FILE] [key=value ...]

The pixel objective (VideoMAE) regresses every masked tube standardised per channel over its
P = pt·ph·pw voxels (`sigma.models.tubes.tube_pixels`, unbiased std). Two predictors that ignore
the clip score, on the very targets a run with the same config sees at its first epoch:

- `zeros`: predict 0, i.e. each tube's own mean colour. A textured channel of a tube scores
  (P − 1)/P, a flat one 0, so this is (P − 1)/P times the share of textured tube channels; a set with
  many flat tubes (a black background) makes the pixel loss look low while nothing is learned.
- `best_constant`: the one target vector that is best over the whole set (the mean target):
  `zeros` minus the squared norm of the mean target over D, a floor for anything clip-blind.
"""
import argparse
import json
import sys

import numpy as np
import torch


def pixel_baselines(cfg, data, clips=None, draw=0, batch_size=8, num_workers=0):
    """Loss of the all-zeros and of the best constant prediction of the pixel objective's target.

    cfg: a resolved pretraining config (`load_config`); its data section (frames, sampling rate,
    size, scales, flip, mask ratio, tube size, seed) builds the same dataset as `sigma.pretrain`.
    data: the list or folder given to `--data`. clips: how many clips, spread evenly over the list
    (default all); draw: the epoch whose clips and masks are used. Returns a dict: zeros,
    best_constant (float, the mean squared error per target element), flat_tube_share (masked tubes
    whose target is zero in every channel), clips, masked_tubes, tube_size, target_dim.
    """
    from sigma.data import VideoDataset
    from sigma.models import create_projection

    from .trainer import build_dataset, tube_size

    if clips is not None and (not isinstance(clips, int) or clips < 1):
        raise ValueError(f"clips must be a positive int or None (all), got {clips!r}")
    dataset = build_dataset(cfg, data, VideoDataset)
    dataset.set_epoch(draw)
    n = len(dataset) if clips is None else min(clips, len(dataset))
    indices = np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist()  # distinct: n <= len
    target = create_projection("pixels", tube_size=tube_size(cfg))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                         num_workers=num_workers)
    sum_sq, total, flat, count = 0.0, None, 0, 0
    for batch in loader:
        t = target(batch["video"], batch["mask"]).double()  # (B, N_mask, D)
        t = t.reshape(-1, t.shape[-1])
        sum_sq += float((t * t).sum())
        total = t.sum(0) if total is None else total + t.sum(0)
        # A flat channel normalises to (x - mean) / eps: rounding leaves values far below 1e-2.
        flat += int((t.abs().amax(-1) < 1e-2).sum())
        count += t.shape[0]
    dim = total.numel()
    zeros = sum_sq / (count * dim)
    mean = total / count
    return {"zeros": zeros, "best_constant": zeros - float((mean * mean).sum()) / dim,
            "flat_tube_share": flat / count, "clips": n, "masked_tubes": count,
            "tube_size": list(tube_size(cfg)), "target_dim": dim}


def main(argv=None):
    from .config import ConfigError, load_config
    p = argparse.ArgumentParser(prog="python -m sigma.pretrain.baseline",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="tiny", help="the pretraining config (name or YAML; default tiny)")
    p.add_argument("--data", required=True, help="the video list or folder the pixel run trains on")
    p.add_argument("--clips", type=int, default=None, help="clips, spread evenly over the list (default all)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--output", default=None, help="also write the result here as JSON (atomically)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="the pixel run's config overrides")
    args = p.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        result = pixel_baselines(cfg, args.data, clips=args.clips, num_workers=args.num_workers)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"python -m sigma.pretrain.baseline: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result)
    if args.output:
        from sigma.engine.files import atomic_write_text
        atomic_write_text(args.output, json.dumps(result, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
