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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sigma.diagnostics import feature_collapse_stats
from sigma.engine import amp as amp_policy
from sigma.engine.checkpoints import (
    all_finite,
    first_non_finite,
    named_tensors,
    parameter_fingerprint,
    rng_state,
    set_rng_state,
)
from sigma.engine.config import invoked_as
from sigma.engine.distributed import (
    DistInfo,
    ResumableDistributedSampler,
    all_gather_object,
    all_reduce_mean,
    barrier,
    init_distributed,
    shutdown,
    wrap_ddp,
)
from sigma.engine.files import PRETRAIN_FORMAT, atomic_write_text
from sigma.engine.interrupt import GracefulStop, Interrupted, signal_name, stop_flag
from sigma.engine.optim import build_optimizer, build_scheduler, scaled_lr
from sigma.engine.provenance import provenance
from sigma.engine.rundir import claim_output_dir
from sigma.engine.seeding import seed_everything, seed_worker

from . import checkpoint as ck
from .config import ConfigError, check_machine, config_changes, dump_config, listed_changes
from .objectives import PretrainModule, build_criterion

SIGMA_STATS = ("loss_v", "loss_p", "entropy_v", "entropy_p", "usage_perplexity_v", "usage_perplexity_p",
               "unused_prototypes_v", "unused_prototypes_p", "marginal_error_v", "marginal_error_p")
COLLAPSE = ("pred_std", "pred_erank", "target_std", "target_erank")
# Functions called as fn(step, info) after every optimizer step, on every rank: a place to watch
# a run from outside the loop (tests/pretrain_launcher.py injects faults through it).
STEP_CALLBACKS = []
# A pretraining run in its output folder: files that mean one is there, and what --overwrite deletes
# (also its TensorBoard logs and temporary files of interrupted atomic writes).
# What shows that a folder holds a run: a checkpoint, or metrics rows (`run_marks`). A start that
# failed before its first step (no readable video, a NaN at step 1) leaves only config.yaml and a
# metrics header: nothing is lost by starting again there, so that is not a run.
RUN_MARKS = ("checkpoints/checkpoint-*.pt", "checkpoints/last.pt")
RUN_FILES = ("metrics.csv", "config.yaml", *RUN_MARKS, "provenance.json", "tensorboard", "checkpoints/.*.tmp",
             ".config.yaml.*.tmp", ".provenance.json.*.tmp")


def run_marks(output_dir):
    """RUN_MARKS, and metrics.csv when it holds a row below its header."""
    metrics = Path(output_dir) / "metrics.csv"
    if metrics.is_file():
        with metrics.open() as f:
            if sum(1 for line in f if line.strip()) > 1:
                return ("metrics.csv",) + RUN_MARKS
    return RUN_MARKS


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


@dataclass
class Run:
    """One pretraining run as the step loop sees it (built by `setup`)."""
    cfg: dict
    info: DistInfo
    out: Path
    dataset: object
    module: PretrainModule
    net: torch.nn.Module  # `module`, or DDP over it
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    autocast: object  # () -> a fresh autocast context
    amp: str
    steps_per_epoch: int
    total_steps: int
    stop: int
    clips_per_step: int
    lr: float
    record: dict  # model/projection/loss configs, as written into checkpoints
    step: int = 0
    resumed_from: Path = None
    log: MetricsLog = None
    bar: object = None
    pending: dict = field(default_factory=dict)  # loss sum and timing since the last metrics row
    interrupt: GracefulStop = None  # SIGINT/SIGTERM received (set while the step loop runs)

    def say(self, msg):
        if self.info.is_main:
            from tqdm.auto import tqdm
            tqdm.write(f"[sigma.pretrain] {msg}", file=sys.stderr)


def train(cfg, data, output_dir, resume=None, argv=None, overwrite=False):
    """Pretrain with the resolved config `cfg` on the video list or folder `data`, writing into
    `output_dir`. resume: None, "auto" (newest checkpoint in output_dir if any) or a checkpoint
    path. An `output_dir` that holds a run already needs `resume` or `overwrite` (which deletes
    that run's RUN_FILES). Returns the final step. Under torchrun each process calls this."""
    check_machine(cfg)  # before any process group or data: the device is there, data.root exists
    info = init_distributed(cfg["device"])
    claim_run_dir(output_dir, info, resume, overwrite)
    run = setup(cfg, data, output_dir, info)
    if info.is_main:
        for leftover in ck.remove_leftovers(run.out):
            run.say(f"removed {leftover}, a temporary file left by an interrupted write")
    if resume is not None:
        resume_run(run, resume)
    start_outputs(run, data, argv)
    from tqdm.auto import tqdm
    run.bar = tqdm(total=run.stop, initial=run.step, disable=not info.is_main, dynamic_ncols=True,
                   desc="pretrain", file=sys.stderr)
    try:
        with GracefulStop(run.say, prog=invoked_as("sigma.pretrain", "sigma-pretrain")) as run.interrupt:
            while run.step < run.stop:
                train_one_epoch(run)
    except Interrupted:
        shutdown(info)  # every rank stopped at the same step: leaving the group cannot hang
        raise
    finally:
        run.bar.close()
        if run.log is not None:
            run.log.close()
    run.say(f"done: {run.step} steps; checkpoints in {ck.checkpoint_dir(run.out)}")
    shutdown(info)
    return run.step


def claim_run_dir(output_dir, info, resume, overwrite):
    """Refuse an output folder that holds a run unless it is resumed or overwritten; on overwrite,
    rank 0 deletes the old run (RUN_FILES) while the other ranks wait."""
    gone = claim_output_dir(output_dir, what="pretraining run", marks=run_marks(output_dir), removes=RUN_FILES,
                            resume=resume, overwrite=overwrite, remove=info.is_main)
    if overwrite:
        barrier(info)
    if gone and info.is_main:
        from tqdm.auto import tqdm
        tqdm.write(f"[sigma.pretrain] --overwrite: deleted the previous run's {', '.join(gone)} in {output_dir}",
                   file=sys.stderr)


def setup(cfg, data, output_dir, info):
    """Seed, index the data, build the networks, optimizer, schedule and AMP: a Run at step 0."""
    create_model, create_projection, VideoDataset = _factories()
    o = cfg["optim"]
    try:
        amp, autocast, scaler = amp_policy.build_amp(cfg["amp"], info.device)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    seed_everything(cfg["seed"])
    try:
        dataset = build_dataset(cfg, data, VideoDataset)
    except (OSError, ValueError, RuntimeError) as e:
        raise DataError(f"--data {data}: {e}") from e
    clips_per_step = o["batch_size"] * o["accum_steps"] * info.world_size
    steps_per_epoch = len(dataset) // info.world_size // (o["batch_size"] * o["accum_steps"])
    if steps_per_epoch == 0:
        readable = dataset.check_readable()  # a list this short: nothing readable is the error to report, if so
        raise ConfigError(f"{data} has {len(dataset)} videos ({readable} readable), fewer than one optimizer step "
                          f"needs (batch_size {o['batch_size']} x accum_steps {o['accum_steps']} x {info.world_size} "
                          f"processes = {clips_per_step}); lower optim.batch_size")
    total_steps = o["epochs"] * steps_per_epoch
    try:
        module, model_config, projection_config, loss_config = build_module(cfg, create_model, create_projection)
    except (TypeError, ValueError) as e:  # e.g. an unknown model.kwargs key, DINO without weights
        raise ConfigError(f"cannot build the networks from the config: {e}") from e
    module.to(info.device)
    lr = scaled_lr(o["base_lr"], clips_per_step)
    optimizer = build_optimizer(module, lr, o["weight_decay"], o["betas"])
    scheduler = build_scheduler(optimizer, total_steps, round(o["warmup_epochs"] * steps_per_epoch), o["min_lr"],
                                o["warmup_lr"])
    record = {"model_config": model_config, "projection_config": projection_config, "loss_config": loss_config}
    return Run(cfg, info, Path(output_dir), dataset, module, wrap_ddp(module, info), optimizer, scheduler, scaler,
               autocast, amp, steps_per_epoch, total_steps, min(total_steps, o["max_steps"] or total_steps),
               clips_per_step, lr, record)


def resume_run(run, resume):
    """Load the checkpoint `resume` ("auto": the newest in the output folder, if any) into `run`."""
    if resume == "auto":
        path, state = ck.find_resume_checkpoint(run.out)
        if state is None:
            run.say(f"--resume auto: no checkpoint in {ck.checkpoint_dir(run.out)} yet, starting from scratch")
            return
    else:
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
        try:
            state = ck.load_checkpoint(path)
        except ValueError as e:
            raise DataError(f"--resume {resume}: {e}") from e
    module = run.module
    changed = config_changes(state.get("config", {}), run.cfg)
    try:
        module.model.load_state_dict(state["model"])
        module.projection.load_state_dict(state["projection"])
        if module.objective == "sigma":
            module.criterion.load_state_dict(state["loss"])
        bad = ck.non_finite_entry(state)
    except (KeyError, RuntimeError) as e:
        # a checkpoint of another config (model size, projection, K): one line naming what differs,
        # not torch's pages of keys
        what = listed_changes(changed) if changed else _state_mismatch(module, state)
        raise DataError(f"--resume {path}: the checkpoint does not fit this config: {what}; "
                        "resume with the config it was written with") from e
    if bad is not None:
        raise DataError(f"--resume {path}: {bad} holds NaN or inf (step {state['step']}); resume from an "
                        "older checkpoint")
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])  # every rank's generators are the same (sigma.engine.seeding)
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise DataError(f"--resume {path}: its step {step!r} is not a number of optimizer steps (an integer >= 0)")
    run.step, run.resumed_from = step, path
    pending = state.get("pending_loss")  # loss summed since the last metrics row, per rank
    if pending:
        mine = pending[min(run.info.rank, len(pending) - 1)]
        run.pending = {"loss_sum": mine["sum"].to(run.info.device), "steps": int(mine["steps"])}
    if changed:
        run.say(f"resuming with a config that differs from the checkpoint's: {listed_changes(changed)}")
    run.say(f"resuming from {path} at step {run.step}")


def start_outputs(run, data, argv):
    """Provenance (kept in every checkpoint), and on rank 0 config.yaml, provenance.json and the
    metrics log."""
    info, ds = run.info, run.dataset
    n_skipped = int(getattr(ds, "num_skipped", 0) or 0)
    if n_skipped:
        run.say(f"{n_skipped} unreadable video(s) skipped while indexing {data}")
    run.record["provenance"] = provenance(
        argv, seed=run.cfg["seed"], world_size=info.world_size, data=str(data),
        resumed_from=str(run.resumed_from) if run.resumed_from else None, steps_per_epoch=run.steps_per_epoch,
        total_steps=run.total_steps, peak_lr=run.lr, amp=run.amp, device=str(info.device), dataset_size=len(ds),
        dataset_skipped=n_skipped)
    columns = ["step", "epoch", "loss", "lr", "clips_per_s", "grad_norm", "loss_scale", "videos_skipped"]
    columns += (list(SIGMA_STATS) if run.module.objective == "sigma" else []) + list(COLLAPSE)
    run.pending = {"loss_sum": torch.zeros((), device=info.device), "steps": 0, **run.pending,
                   "t": time.perf_counter(), "timed": 0}
    if not info.is_main:
        return
    run.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.out / "config.yaml", dump_config(run.cfg))
    atomic_write_text(run.out / "provenance.json", json.dumps(run.record["provenance"], indent=2) + "\n")
    run.log = MetricsLog(run.out, columns, resume_step=run.step if run.resumed_from else None,
                         tensorboard=run.cfg["log"]["tensorboard"])
    run.say(f"{len(ds)} videos, {run.steps_per_epoch} steps/epoch, {run.stop} steps (schedule {run.total_steps}), "
            f"global batch {run.clips_per_step}, peak lr {run.lr:.3g}, amp {run.amp}, "
            f"{info.world_size} process(es) on {info.device.type}")


def epoch_loader(run, epoch, start):
    """This rank's batches of epoch `epoch` from its `start`-th clip on: the sampler's order and
    every clip's randomness (seeded from (seed, epoch, index), whichever worker draws it) are what
    make a mid-epoch resume exact."""
    cfg = run.cfg
    sampler = ResumableDistributedSampler(run.dataset, run.info.world_size, run.info.rank, seed=cfg["seed"])
    sampler.set_epoch(epoch)
    sampler.set_start(start)
    d = cfg["data"]
    return DataLoader(run.dataset, batch_size=cfg["optim"]["batch_size"], sampler=sampler,
                      num_workers=d["num_workers"], drop_last=True, worker_init_fn=seed_worker,
                      pin_memory=d["pin_memory"] and run.info.device.type == "cuda",
                      generator=torch.Generator().manual_seed(cfg["seed"] + epoch))


def train_one_epoch(run):
    """Optimizer steps from `run.step` to the end of its epoch (or `run.stop`): log, checkpoint,
    call STEP_CALLBACKS; on SIGINT/SIGTERM checkpoint and raise Interrupted (`stop_if_asked`)."""
    o, lg = run.cfg["optim"], run.cfg["log"]
    epoch, in_epoch = divmod(run.step, run.steps_per_epoch)
    batches = iter(epoch_loader(run, epoch, in_epoch * o["batch_size"] * o["accum_steps"]))
    while in_epoch < run.steps_per_epoch and run.step < run.stop:
        log_now = (run.step + 1) % lg["every"] == 0 or run.step + 1 == run.stop
        stats_now = (run.step + 1) % lg["stats_every"] == 0 or run.step + 1 == run.stop
        run.scheduler.step_update(run.step)
        pred, target, grad_norm = train_step(run, batches, log_now)
        run.step += 1
        in_epoch += 1
        run.pending["steps"] += 1
        run.pending["timed"] += 1
        for callback in STEP_CALLBACKS:
            callback(run.step, run.info)
        # a signal is acted on where the ranks agree on it: every step in one process, else at the
        # all-reduces of log steps and checkpoints (stop_if_asked)
        stop = run.info.world_size == 1 and run.interrupt is not None and run.interrupt.requested
        if log_now:
            stop = write_metrics(run, epoch, grad_norm, pred if stats_now else None,
                                 target if stats_now else None) or stop
        del pred, target
        if run.step % run.cfg["checkpoint"]["every"] == 0 or run.step == run.stop or stop:
            stop = save(run) or stop
        run.bar.update(1)
        if stop:
            stop_if_asked(run)


def stop_if_asked(run):
    """Raise Interrupted after a signal's checkpoint (written by the caller); nothing when the run
    has just reached its last step anyway."""
    if run.step >= run.stop:
        return
    signum = run.interrupt.signum if run.interrupt is not None and run.interrupt.requested else 15
    path = ck.checkpoint_dir(run.out) / f"checkpoint-{run.step}.pt"
    raise Interrupted(f"stopped by {signal_name(signum)} after step {run.step} of {run.stop}; checkpoint written "
                      f"to {path}; continue with --resume auto", signum, is_main=run.info.is_main)


def train_step(run, batches, log_now):
    """One optimizer step over `accum_steps` micro-batches; (pred, target) of the last one and the
    gradient norm (None unless clipping or logging)."""
    o, net, module = run.cfg["optim"], run.net, run.module
    accum = o["accum_steps"]
    for micro in range(accum):
        last = micro == accum - 1
        batch = next(batches)
        video = batch["video"].to(run.info.device, non_blocking=True)
        mask = batch["mask"].to(run.info.device, non_blocking=True)
        if module.objective == "sigma":
            module.criterion.compute_stats = log_now and last
        # gradients are averaged over ranks once per optimizer step, on its last micro-batch
        sync = contextlib.nullcontext() if (last or run.info.world_size == 1) else net.no_sync()
        with sync:
            with run.autocast():
                loss, pred, target = net(video, mask)
            run.scaler.scale(loss / accum).backward()
        run.pending["loss_sum"] += loss.detach() / accum
    grad_norm = None
    if o["clip_grad"] is not None or log_now:
        run.scaler.unscale_(run.optimizer)
        max_norm = o["clip_grad"] if o["clip_grad"] is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return pred, target, grad_norm


def write_metrics(run, epoch, grad_norm, pred, target):
    """One metrics row (mean loss since the last one, speed, stats); stop on a non-finite loss.
    Returns whether any rank was signalled to stop (the flag rides on the row's all-reduce)."""
    p = run.pending
    row, stop = _log_row(run.module, run.info, run.step, epoch, p["loss_sum"] / p["steps"], run.optimizer,
                         grad_norm, run.scaler, pred, target, stop_flag(run.interrupt, run.info.device))
    # steps restored from an interrupted run's checkpoint were not timed by this process's clock
    row["clips_per_s"] = p["timed"] * run.clips_per_step / (time.perf_counter() - p["t"])
    row["videos_skipped"] = int(getattr(run.dataset, "num_skipped", 0) or 0)
    if not math.isfinite(row["loss"]):
        raise FloatingPointError(f"the loss is {row['loss']} at step {run.step}; stopping (lower the "
                                 f"learning rate, enable optim.clip_grad, or check the data)")
    if run.log is not None:
        run.log.write(row)
        run.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", clips_s=f"{row['clips_per_s']:.1f}",
                            refresh=False)
    p["loss_sum"].zero_()
    p["steps"], p["timed"], p["t"] = 0, 0, time.perf_counter()
    return stop


def save(run):
    """Checkpoint `run` at its step (rank 0 writes; every rank contributes its fingerprint and its
    loss sum since the last metrics row). Refuses a non-finite state (`check_finite`). Returns
    whether any rank was signalled to stop."""
    module, spe, step = run.module, run.steps_per_epoch, run.step
    stop = check_finite(run)
    p = run.pending
    gathered = all_gather_object((parameter_fingerprint(module), {"sum": p["loss_sum"].detach().cpu(),
                                                                  "steps": p["steps"]}), run.info)
    fingerprints, pending = [g[0] for g in gathered], [g[1] for g in gathered]
    if run.info.is_main:
        state = {
            "format": PRETRAIN_FORMAT, "step": step, "epoch": step // spe, "step_in_epoch": step % spe,
            "steps_per_epoch": spe, "model_config": run.record["model_config"],
            "projection_config": run.record["projection_config"],
            "model": module.model.state_dict(), "projection": module.projection.state_dict(),
            "loss": module.criterion.state_dict() if module.objective == "sigma" else {},
            "loss_config": run.record["loss_config"], "objective": module.objective,
            "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
            "scheduler": run.scheduler.state_dict(), "rng": rng_state(), "config": run.cfg,
            "provenance": run.record["provenance"], "rank_fingerprints": fingerprints, "pending_loss": pending,
        }
        ck.save_checkpoint(state, run.out, keep=run.cfg["checkpoint"]["keep"])
    barrier(run.info)
    return stop


def _trained_state(run):
    m = run.module
    return {"model": m.model.state_dict(), "projection": m.projection.state_dict(),
            "loss": m.criterion.state_dict() if m.objective == "sigma" else {},
            "optimizer": run.optimizer.state_dict()["state"], "pending_loss": run.pending["loss_sum"]}


def check_finite(run):
    """Before a checkpoint: are the weights, optimizer moments and the loss summed since the last
    row finite on every rank, and was any rank signalled to stop? One all-reduce and one host sync.
    A non-finite state raises FloatingPointError naming the step and the first non-finite tensor,
    and nothing is written: the newest checkpoint stays the last good one. (With an fp16 scaler a
    step with inf gradients is skipped by the scaler and leaves the state finite: not an error.)"""
    trained = list(named_tensors(_trained_state(run)))
    bad = (~all_finite([t for _, t in trained])).float().to(run.info.device)
    flags = all_reduce_mean(torch.stack([bad, stop_flag(run.interrupt, run.info.device)]), run.info).tolist()
    if flags[0] == 0:
        return flags[1] > 0
    name = first_non_finite(trained) or "another rank's state"
    newest = ck.newest_checkpoint(run.out)
    kept = f"the newest checkpoint is still {newest[1]} (step {newest[0]})" if newest else "no checkpoint was written"
    raise FloatingPointError(f"non-finite training state at step {run.step}: {name} holds NaN or inf; "
                             f"checkpoint-{run.step}.pt not written, {kept}. Lower the learning rate, enable "
                             "optim.clip_grad, or check the data")


def _log_row(module, info, step, epoch, mean_loss, optimizer, grad_norm, scaler, pred, target, stop):
    """(One metrics row, whether any rank asked to stop); the only host syncs of the loop happen
    here (and at checkpoints). `stop`: this rank's stop flag (`stop_flag`), reduced with the row."""
    vals = {"loss": mean_loss, "stop": stop}
    stats = module.criterion.last_stats if module.objective == "sigma" else {}
    for k in ("loss_v", "loss_p"):
        if k in stats:
            vals[k] = stats[k].float()
    names = list(vals)
    reduced = all_reduce_mean(torch.stack([vals[k].float() for k in names]), info).tolist()
    row = {"step": step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
    row.update(zip(names, reduced))
    stop = row.pop("stop") > 0
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
    return row, stop


def _state_mismatch(module, state):
    """The tensors in which a checkpoint's state differs from `module`'s (for checkpoints without a
    config): missing or extra names and shapes, one line."""
    parts = [("model", module.model), ("projection", module.projection)]
    if module.objective == "sigma":
        parts.append(("loss", module.criterion))
    found = []
    for part, net in parts:
        have, got = net.state_dict(), state.get(part) or {}
        found += [f"{part}.{k} missing from the checkpoint" for k in have if k not in got]
        found += [f"{part}.{k} not in this config's networks" for k in got if k not in have]
        found += [f"{part}.{k}: checkpoint shape {list(got[k].shape)}, now {list(have[k].shape)}"
                  for k in have if k in got and tuple(got[k].shape) != tuple(have[k].shape)]
    shown = "; ".join(found[:6]) + (f"; and {len(found) - 6} more" if len(found) > 6 else "")
    return shown or "its tensors do not load"
