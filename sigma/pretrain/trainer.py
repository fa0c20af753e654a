"""The pretraining loop: one process, or one process per device under torchrun.

    from sigma.pretrain import load_config, train
    train(load_config("tiny"), data="synthetic/train.txt", output_dir="runs/tiny")

Writes (rank 0 only) DIR/config.yaml, DIR/provenance.json, DIR/metrics.csv (+ DIR/tensorboard)
and DIR/checkpoints/. See docs/pretraining.md.
"""
import contextlib
import csv
import json
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from sigma.diagnostics import feature_collapse_stats

from . import checkpoint as ck
from .config import ConfigError, dump_config
from .distributed import (
    ResumableDistributedSampler,
    all_gather_object,
    all_reduce_mean,
    barrier,
    init_distributed,
    shutdown,
)
from .objectives import PretrainModule, build_criterion
from .optim import build_optimizer, build_scheduler, peak_lr

SIGMA_STATS = ("loss_v", "loss_p", "entropy_v", "entropy_p", "usage_perplexity_v", "usage_perplexity_p",
               "unused_prototypes_v", "unused_prototypes_p", "marginal_error_v", "marginal_error_p")
COLLAPSE = ("pred_std", "pred_erank", "target_std", "target_erank")
# Testing hook: "STEP" or "STEP:RANK" makes that rank exit abruptly right after optimizer step STEP,
# on the first attempt of a torchrun job only (TORCHELASTIC_RESTART_COUNT 0 or unset).
CRASH_ENV = "SIGMA_PRETRAIN_CRASH_AT_STEP"


class DataError(ValueError):
    """The video list or folder cannot be used (missing, empty, nothing readable)."""


def _factories():
    from sigma.data import VideoDataset
    from sigma.models import create_model, create_projection
    return create_model, create_projection, VideoDataset


def tube_size(cfg):
    d = cfg["data"]
    return (d["tubelet_size"], d["patch_size"], d["patch_size"])


def build_dataset(cfg, data, VideoDataset):
    d = cfg["data"]
    return VideoDataset(data, root=d["root"], num_frames=d["num_frames"], sampling_rate=d["sampling_rate"],
                        size=d["img_size"], scales=tuple(d["scales"]), flip=d["flip"], train=True,
                        mask_ratio=d["mask_ratio"], tube_size=tube_size(cfg), reader=d["reader"], seed=cfg["seed"])


def build_module(cfg, create_model, create_projection):
    """(PretrainModule, model_config, projection_config, loss_config) as recorded in checkpoints."""
    d, p = cfg["data"], cfg["projection"]
    objective = cfg["objective"]["name"]
    kind = "pixels" if objective == "pixel" else p["kind"]
    if objective != "pixel" and kind == "pixels":
        raise ConfigError("projection.kind=pixels is the target of objective.name=pixel only")
    projection_config = {"kind": kind, "tube_size": list(tube_size(cfg))}
    if kind != "pixels":  # the pixel target has no settings: the projection section is not used
        projection_config.update(out_dim=p["out_dim"], **p["kwargs"])
    projection = create_projection(**projection_config)
    model_config = {"name": cfg["model"]["name"], "out_dim": int(projection.out_dim), "num_frames": d["num_frames"],
                    "img_size": d["img_size"], "patch_size": d["patch_size"], "tubelet_size": d["tubelet_size"],
                    **cfg["model"]["kwargs"]}
    model = create_model(**model_config)
    criterion, loss_config = build_criterion(cfg, int(projection.out_dim))
    return PretrainModule(objective, model, projection, criterion), model_config, projection_config, loss_config


def _amp(cfg, device):
    amp = cfg["amp"]
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "none"
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp=fp16 needs a CUDA device; use amp=bf16 or amp=none on the CPU")
    return amp


class MetricsLog:
    """metrics.csv (fixed columns; rows after `resume_step` from an interrupted run are dropped on
    resume) and TensorBoard scalars when tensorboard is installed and enabled."""

    def __init__(self, output_dir, columns, resume_step=None, tensorboard=True):
        self.path = Path(output_dir) / "metrics.csv"
        self.columns = list(columns)
        kept = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(kept)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=resume_step)
            except ImportError:
                pass

    def write(self, row):
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _seed_everything(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def train(cfg, data, output_dir, resume=None, argv=None):
    """Pretrain with the resolved config `cfg` on the video list or folder `data`, writing into
    `output_dir`. resume: None, "auto" (newest checkpoint in output_dir if any) or a checkpoint
    path. Returns the final step. Under torchrun each process calls this."""
    create_model, create_projection, VideoDataset = _factories()
    info = init_distributed(cfg["device"])
    device, is_main = info.device, info.is_main
    out = Path(output_dir)
    o, lg = cfg["optim"], cfg["log"]
    amp = _amp(cfg, device)

    def say(msg):
        if is_main:
            from tqdm.auto import tqdm
            tqdm.write(f"[sigma.pretrain] {msg}", file=sys.stderr)

    _seed_everything(cfg["seed"])
    try:
        dataset = build_dataset(cfg, data, VideoDataset)
    except (OSError, ValueError, RuntimeError) as e:
        raise DataError(f"--data {data}: {e}") from e
    n_skipped = int(getattr(dataset, "num_skipped", 0) or 0)
    if n_skipped:
        say(f"{n_skipped} unreadable video(s) skipped while indexing {data}")
    clips_per_step = o["batch_size"] * o["accum_steps"] * info.world_size
    steps_per_epoch = len(dataset) // info.world_size // (o["batch_size"] * o["accum_steps"])
    if steps_per_epoch == 0:
        readable = dataset.check_readable()  # a list this short: nothing readable is the error to report, if so
        raise ConfigError(f"{data} has {len(dataset)} videos ({readable} readable), fewer than one optimizer step "
                          f"needs (batch_size {o['batch_size']} x accum_steps {o['accum_steps']} x {info.world_size} "
                          f"processes = {clips_per_step}); lower optim.batch_size")
    total_steps = o["epochs"] * steps_per_epoch
    stop = min(total_steps, o["max_steps"]) if o["max_steps"] else total_steps
    warmup_steps = round(o["warmup_epochs"] * steps_per_epoch)

    try:
        module, model_config, projection_config, loss_config = build_module(cfg, create_model, create_projection)
    except (TypeError, ValueError) as e:  # e.g. an unknown model.kwargs key, DINO without weights
        raise ConfigError(f"cannot build the networks from the config: {e}") from e
    module.to(device)
    lr = peak_lr(o["base_lr"], clips_per_step)
    optimizer = build_optimizer(module, lr, o["weight_decay"], o["betas"])
    scheduler = build_scheduler(optimizer, total_steps, warmup_steps, o["min_lr"], o["warmup_lr"])
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    start_step, resumed_from = 0, None
    if resume is not None:
        if resume == "auto":
            path, state = ck.find_resume_checkpoint(out)
        else:
            path = Path(resume)
            if not path.is_file():
                raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
            try:
                state = ck.load_checkpoint(path)
            except ValueError as e:
                raise DataError(f"--resume {resume}: {e}") from e
        if state is not None:
            try:
                module.model.load_state_dict(state["model"])
                module.projection.load_state_dict(state["projection"])
                if module.objective == "sigma":
                    module.criterion.load_state_dict(state["loss"])
            except (KeyError, RuntimeError) as e:
                # a checkpoint of another config (model size, projection, K): one line, not pages of keys
                first = str(e).strip().splitlines()[0]
                raise DataError(f"--resume {path}: the checkpoint does not fit this config ({first}); "
                                "resume with the config it was written with") from e
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            scheduler.load_state_dict(state["scheduler"])
            ck.set_rng_state(state["rng"])
            start_step, resumed_from = int(state["step"]), path
            changed = _config_changes(state.get("config", {}), cfg)
            if changed:
                say(f"resuming with a config that differs from the checkpoint's in: {', '.join(changed)}")
            say(f"resuming from {path} at step {start_step}")
        else:
            say(f"--resume {resume}: no checkpoint in {out / 'checkpoints'} yet, starting from scratch")

    net = module
    if info.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)

    prov = ck.provenance(cfg, info.world_size, argv)
    prov.update(data=str(data), resumed_from=str(resumed_from) if resumed_from else None,
                steps_per_epoch=steps_per_epoch, total_steps=total_steps, peak_lr=lr, amp=amp,
                device=str(device), dataset_size=len(dataset), dataset_skipped=n_skipped)
    columns = ["step", "epoch", "loss", "lr", "clips_per_s", "grad_norm", "loss_scale", "videos_skipped"]
    if module.objective == "sigma":
        columns += list(SIGMA_STATS)
    columns += list(COLLAPSE)
    log = None
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        ck.atomic_write_text(out / "config.yaml", dump_config(cfg))
        ck.atomic_write_text(out / "provenance.json", json.dumps(prov, indent=2) + "\n")
        log = MetricsLog(out, columns, resume_step=start_step if resumed_from else None,
                         tensorboard=lg["tensorboard"])
        say(f"{len(dataset)} videos, {steps_per_epoch} steps/epoch, {stop} steps "
            f"(schedule {total_steps}), global batch {clips_per_step}, peak lr {lr:.3g}, amp {amp}, "
            f"{info.world_size} process(es) on {device.type}")

    sampler = ResumableDistributedSampler(dataset, info.world_size, info.rank, seed=cfg["seed"])
    autocast = (torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)
                if amp != "none" else contextlib.nullcontext())
    params = [p for p in module.parameters() if p.requires_grad]
    crash_step, crash_rank = _crash_hook()

    def save(step):
        fingerprints = all_gather_object(ck.parameter_fingerprint(module), info)
        if is_main:
            state = {
                "format": ck.FORMAT, "step": step, "epoch": step // steps_per_epoch,
                "step_in_epoch": step % steps_per_epoch, "steps_per_epoch": steps_per_epoch,
                "model_config": model_config, "projection_config": projection_config,
                "model": module.model.state_dict(), "projection": module.projection.state_dict(),
                "loss": module.criterion.state_dict() if module.objective == "sigma" else {},
                "loss_config": loss_config, "objective": module.objective,
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": ck.rng_state(), "config": cfg,
                "provenance": prov, "rank_fingerprints": fingerprints,
            }
            ck.save_checkpoint(state, out, keep=cfg["checkpoint"]["keep"])
        barrier(info)

    from tqdm.auto import tqdm
    bar = tqdm(total=stop, initial=start_step, disable=not is_main, dynamic_ncols=True, desc="pretrain",
               file=sys.stderr)
    step = start_step
    loss_sum = torch.zeros((), device=device)
    steps_since, t_last = 0, time.perf_counter()
    try:
        while step < stop:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch)
            sampler.set_start(in_epoch * o["batch_size"] * o["accum_steps"])
            # Every clip's randomness (segment, crop, flip, mask) is seeded from (seed, epoch, index)
            # by the dataset, whichever worker draws it: what makes a mid-epoch resume exact.
            dataset.set_epoch(epoch)
            loader = DataLoader(dataset, batch_size=o["batch_size"], sampler=sampler,
                                num_workers=cfg["data"]["num_workers"], drop_last=True,
                                pin_memory=cfg["data"]["pin_memory"] and device.type == "cuda",
                                generator=torch.Generator().manual_seed(cfg["seed"] + epoch))
            batches = iter(loader)
            while in_epoch < steps_per_epoch and step < stop:
                log_now = (step + 1) % lg["every"] == 0 or step + 1 == stop
                stats_now = (step + 1) % lg["stats_every"] == 0 or step + 1 == stop
                scheduler.step_update(step)
                for micro in range(o["accum_steps"]):
                    last = micro == o["accum_steps"] - 1
                    batch = next(batches)
                    video = batch["video"].to(device, non_blocking=True)
                    mask = batch["mask"].to(device, non_blocking=True)
                    if module.objective == "sigma":
                        module.criterion.compute_stats = log_now and last
                    sync = contextlib.nullcontext() if (last or info.world_size == 1) else net.no_sync()
                    with sync:
                        with autocast:
                            loss, pred, target = net(video, mask)
                        scaler.scale(loss / o["accum_steps"]).backward()
                    loss_sum += loss.detach() / o["accum_steps"]
                grad_norm = None
                if o["clip_grad"] is not None or log_now:
                    scaler.unscale_(optimizer)
                    max_norm = o["clip_grad"] if o["clip_grad"] is not None else float("inf")
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                in_epoch += 1
                steps_since += 1
                if step == crash_step and info.rank == crash_rank:
                    os._exit(17)

                if log_now:
                    row = _log_row(module, info, step, epoch, loss_sum / steps_since, optimizer, grad_norm, scaler,
                                   pred if stats_now else None, target if stats_now else None)
                    dt = time.perf_counter() - t_last
                    row["clips_per_s"] = steps_since * clips_per_step / dt
                    row["videos_skipped"] = int(getattr(dataset, "num_skipped", 0) or 0)
                    if not math.isfinite(row["loss"]):
                        raise FloatingPointError(f"the loss is {row['loss']} at step {step}; stopping (lower the "
                                                 f"learning rate, enable optim.clip_grad, or check the data)")
                    if is_main:
                        log.write(row)
                        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                                        clips_s=f"{row['clips_per_s']:.1f}", refresh=False)
                    loss_sum.zero_()
                    steps_since, t_last = 0, time.perf_counter()
                del pred, target, loss
                if step % cfg["checkpoint"]["every"] == 0 or step == stop:
                    save(step)
                bar.update(1)
    finally:
        bar.close()
        if log is not None:
            log.close()
    if is_main:
        say(f"done: {step} steps; checkpoints in {ck.checkpoint_dir(out)}")
    shutdown(info)
    return step


def _log_row(module, info, step, epoch, mean_loss, optimizer, grad_norm, scaler, pred, target):
    """One metrics row; the only host syncs of the loop happen here."""
    vals = {"loss": mean_loss}
    stats = module.criterion.last_stats if module.objective == "sigma" else {}
    for k in ("loss_v", "loss_p"):
        if k in stats:
            vals[k] = stats[k].float()
    names = list(vals)
    reduced = all_reduce_mean(torch.stack([vals[k].float() for k in names]), info).tolist()
    row = {"step": step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
    row.update(zip(names, reduced))
    for k in SIGMA_STATS:
        if k in stats and k not in row:
            row[k] = float(stats[k])
    if grad_norm is not None:
        row["grad_norm"] = float(grad_norm)
    if scaler.is_enabled():
        row["loss_scale"] = float(scaler.get_scale())
    if pred is not None:
        for name, feats in (("pred", pred), ("target", target)):
            c = feature_collapse_stats(feats)
            row[f"{name}_std"], row[f"{name}_erank"] = float(c["std"]), float(c["erank"])
    return row


def _config_changes(old, new, prefix=""):
    changed = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            changed.append(f"{prefix}{k}")
    return changed


def _crash_hook():
    spec = os.environ.get(CRASH_ENV)
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None, None
    step, _, rank = spec.partition(":")
    try:
        return int(step), int(rank or 0)
    except ValueError:
        warnings.warn(f"ignoring {CRASH_ENV}={spec!r}: expected STEP or STEP:RANK", stacklevel=2)
        return None, None
