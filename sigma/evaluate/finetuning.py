"""Full fine-tuning of a pretrained encoder for video classification (the paper's recipe, VideoMAE's setup).

Recipe defaults (paper, appendix C, "Full finetuning"): AdamW (β 0.9/0.999), base lr 1e-3 scaled
by global batch / 256, weight decay 0.05 (none on biases and norms), layer-wise lr decay 0.75
(timm `param_groups_layer_decay` over the model's `group_matcher`), 5 warmup epochs then cosine
decay to 1e-6 (timm `CosineLRScheduler`, per step), label smoothing 0.1, mixup 0.8 / cutmix 1.0
(`VideoMixup`: soft targets, `SoftTargetCrossEntropy`), RandAugment m9 / mstd 0.5 applied alike to
every frame (`VideoRandAugment`), drop path 0.1, flip (off for SSv2: `flip=False`), epochs 50
(SSv2) / 75 (K400) / 100 (SEVERE). Final number: multi-view testing, softmax averaged over
`test_clips` × `test_crops` views (VideoMAE: 2×3 on SSv2, 5×3 on K400).

Runs on CPU, one GPU or `torchrun --nproc_per_node N` (DDP; NCCL on GPU, gloo on CPU; every rank
draws its share of one seeded permutation per epoch; only rank 0 writes), on `sigma.engine` like
pretraining: `finetune()` sets up (`setup`), `train_one_epoch` runs the steps. Checkpoints
(`OUTPUT_DIR/checkpoints/finetune-last.pt`, atomically) hold model, optimizer, scaler, step, epoch
and RNG states; `resume="auto"` continues from it, mid-epoch included: the sample order, every
sample's augmentation (seeded from (seed, epoch, index)) and the mixup draws are replayed
(`sigma.engine.seeding`). SIGINT/SIGTERM finish the step, write that checkpoint and raise
`sigma.engine.interrupt.Interrupted` (the command line exits 130 / 143); see docs/evaluation.md.
"""
import argparse
import csv
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sigma.engine import amp as amp_policy
from sigma.engine.checkpoints import all_finite, first_non_finite, load_checkpoint, rng_state, set_rng_state
from sigma.engine.config import config_changes, defaults_from, listed_changes
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
from sigma.engine.files import FINETUNE_FORMAT, atomic_torch_save, remove_stale_temps
from sigma.engine.interrupt import GracefulStop, Interrupted, signal_name, stop_flag
from sigma.engine.optim import build_optimizer, build_scheduler, scaled_lr
from sigma.engine.provenance import provenance
from sigma.engine.rundir import claim_output_dir
from sigma.engine.seeding import sample_global_streams, seed_everything, seed_worker

from .augment import VideoMixup, VideoRandAugment, randaugment_normalized_clip
from .common import labelled_splits, require_finite_weights, stratified_subset, write_json
from .config import FinetuneConfig
from .metrics import classification_metrics

# A fine-tuning run in its output folder: files that mean one is there, and what overwrite=True deletes
# (with temporary files of interrupted atomic writes). Other tasks' JSONs in the folder are left alone.
RUN_MARKS = ("finetune_metrics.csv", "finetune.json", "checkpoints/finetune-last.pt")
RUN_FILES = RUN_MARKS + ("checkpoints/.finetune-last.pt.*.tmp", ".finetune.json.*.tmp")
# Told apart from the per-sample streams of the video decoding and cropping (VideoDataset).
_RANDAUG_STREAM = 7


# --- data ------------------------------------------------------------------------------------------

class _RandAugmented(torch.utils.data.Dataset):
    """A train VideoDataset whose clips get `VideoRandAugment`, drawn from Python/NumPy streams seeded
    from (seed, epoch, index) (`sigma.engine.seeding.sample_global_streams`), so a sample's
    augmentation does not depend on the worker or on what was drawn before (exact resume)."""

    def __init__(self, base, randaug, seed):
        from sigma.data import IMAGENET_MEAN, IMAGENET_STD
        self.base, self.randaug, self.seed = base, randaug, seed
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        sample = self.base[key]
        index, epoch = key
        with sample_global_streams(self.seed, epoch, index, _RANDAUG_STREAM):
            sample["video"] = randaugment_normalized_clip(sample["video"], self.randaug, self.mean, self.std)
        return sample


def steps_per_epoch(n, batch_size, world):
    return (n // world) // batch_size


# --- model -------------------------------------------------------------------------------------------

def build_classifier(checkpoint, num_classes, drop_path_rate=0.1, **overrides):
    """`sigma.models.load_classifier`: a VideoClassifier of the checkpoint's architecture with its
    encoder weights (mean pooling + fc_norm + a new head; the pretrained final norm is dropped and
    fc_norm starts fresh, as in VideoMAE fine-tuning), with a clear error for a foreign file."""
    from sigma.models import load_classifier

    try:
        return load_classifier(str(checkpoint), num_classes, drop_path_rate=drop_path_rate, **overrides)
    except ImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - mismatches surface as RuntimeError/KeyError/ValueError/OSError
        raise ValueError(f"--checkpoint {str(checkpoint)!r}: no video classifier could be built from it "
                         f"({type(exc).__name__}: {exc})") from exc



# --- testing ----------------------------------------------------------------------------------------

@torch.no_grad()
def multiview_scores(model, dataset, *, batch_size=4, num_workers=0, device="cpu", amp_dtype=None,
                     label_column=0, indices=None, progress=False):
    """Softmax scores averaged over each sample's views (V = clips × crops): (scores (n, K), labels (n,),
    indices (n,)) for `indices` (default: all) of an eval-mode VideoDataset; with `unreadable="skip"`
    the unreadable clips are left out (n counts the clips scored; none: three empty tensors)."""
    from torch.utils.data import DataLoader, Subset

    from sigma.data import collate_readable

    idx = list(range(len(dataset))) if indices is None else list(indices)
    loader = DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_readable)
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc="test", leave=False, dynamic_ncols=True)
    model.eval()
    scores, labels, scored = [], [], []
    for batch in loader:
        if batch is None:  # every clip of the batch was unreadable
            continue
        video = batch["video"].to(device, non_blocking=True)
        if video.dim() == 5:
            video = video[:, None]
        b, v = video.shape[:2]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(video.flatten(0, 1))
        scores.append(logits.float().softmax(-1).view(b, v, -1).mean(1).cpu())
        labels.append(batch["label"][:, label_column])
        scored.append(batch["index"])
    if not scores:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    return torch.cat(scores), torch.cat(labels), torch.cat(scored)


# --- the task --------------------------------------------------------------------------------------

@dataclass
class FinetuneRun:
    """One fine-tuning run as the step loop sees it (built by `setup`)."""
    args: argparse.Namespace  # finetune()'s arguments
    settings: dict  # the recipe as run: written into checkpoints and finetune.json
    info: DistInfo
    model: torch.nn.Module
    net: torch.nn.Module  # `model`, or DDP over it
    optimizer: torch.optim.Optimizer
    scheduler: object  # None when nothing is trained (epochs=0)
    scaler: torch.amp.GradScaler
    autocast: object  # () -> a fresh autocast context
    mixer: object
    criterion: torch.nn.Module
    train_ds: torch.utils.data.Dataset
    val_records: list
    spe: int  # optimizer steps per epoch
    total_steps: int
    last_step: int
    ckpt_path: Path
    step: int = 0
    history: list = field(default_factory=list)  # the logged losses
    log_file: object = None
    pbar: object = None
    interrupt: GracefulStop = None  # SIGINT/SIGTERM received (set while the step loop runs)


@defaults_from(FinetuneConfig)
def finetune(checkpoint, data, output_dir, *, train_list, val_list, label_column, classes,
             epochs, batch_size, base_lr, min_lr, warmup_epochs, weight_decay, layer_decay, betas, drop_path,
             label_smoothing, mixup, cutmix, mixup_prob, mixup_switch_prob, randaug, flip, sampling_rate, test_clips,
             test_crops, test_batch_size, clip_grad, max_steps, save_every, log_every, seed, label_fraction,
             num_workers, device, amp, resume, overwrite, progress):
    """Fine-tune the encoder of `checkpoint` on DATA/train.txt and test on DATA/val.txt (multi-view).

    Returns (and writes to OUTPUT_DIR/finetune.json) top1, top5, mean_class_accuracy (%) of the
    multi-view test, with the recipe used; the fine-tuned model is in
    OUTPUT_DIR/checkpoints/finetune-last.pt, the per-step log in OUTPUT_DIR/finetune_metrics.csv.
    `max_steps` stops early (the schedule still spans `epochs`); `epochs=0` only tests.
    `label_fraction` < 1 trains on a class-stratified subset of the train list drawn with `seed`
    (`common.stratified_subset`). Training from scratch (the baseline of few-label runs) is the
    untrained encoder a pretraining run starts from, exported and given as `checkpoint`
    (docs/evaluation.md, "An untrained encoder").
    `resume`: None, "auto" (OUTPUT_DIR/checkpoints/finetune-last.pt if present) or a path. An
    OUTPUT_DIR that holds a fine-tuning run already needs `resume` or `overwrite` (which deletes
    that run's RUN_FILES).
    """
    args = argparse.Namespace(**locals())
    t0 = time.time()
    run = setup(args)
    if run.info.is_main:
        remove_stale_temps(run.ckpt_path.parent)  # left by a killed writer
    if resume:
        resume_run(run, resume)
    open_log(run)
    try:
        say = _say if run.info.is_main else None
        with GracefulStop(say, prog="python -m sigma.evaluate finetune") as run.interrupt:
            while run.step < run.last_step:
                train_one_epoch(run)
    except Interrupted:
        shutdown(run.info)  # every rank stopped at the same step
        raise
    finally:
        for done in (run.pbar, run.log_file):
            if done is not None:
                done.close()
    if run.total_steps == 0 or run.step == 0:
        save(run)
    scores, labels, test_skipped = test(run)
    result = {"task": "finetune", **classification_metrics(scores, labels, run.settings["num_classes"]),
              **run.settings, "steps": run.step, "final_train_loss": run.history[-1] if run.history else None,
              "test_skipped_files": test_skipped,
              "train_skipped_files": _skipped(run.train_ds), "checkpoint_out": str(run.ckpt_path),
              "seconds": time.time() - t0, "provenance": provenance()}
    if run.info.is_main:
        write_json(Path(output_dir) / "finetune.json", result)
    shutdown(run.info)
    return result


def setup(args):
    """Join the process group, seed, read the lists, build the classifier, optimizer, schedule,
    AMP, mixup and the training set: a FinetuneRun at step 0."""
    info = init_distributed(args.device)
    claim_run_dir(args, info)
    amp, autocast, scaler = amp_policy.build_amp(args.amp, info.device)
    train_path, val_path, train_records, val_records, num_classes = labelled_splits(
        args.data, args.train_list, args.val_list, args.label_column, args.classes)
    train_records = stratified_subset(train_records, args.label_column, args.label_fraction, args.seed)
    use_mix = args.mixup > 0 or args.cutmix > 0
    if use_mix and args.batch_size % 2:
        raise ValueError(f"batch_size must be even with mixup/cutmix (timm mixes a batch with its flip), "
                         f"got {args.batch_size}")
    spe = steps_per_epoch(len(train_records), args.batch_size, info.world_size)
    if args.epochs > 0 and spe == 0:
        raise ValueError(f"{len(train_records)} training clips over {info.world_size} rank(s) do not fill one batch "
                         f"of {args.batch_size}")
    seed_everything(args.seed)
    if not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint {str(args.checkpoint)!r} does not exist")
    model = build_classifier(args.checkpoint, num_classes, drop_path_rate=args.drop_path).to(info.device)
    require_finite_weights(model, args.checkpoint, "fine-tuning")
    lr = scaled_lr(args.base_lr, args.batch_size * info.world_size)
    total_steps = args.epochs * spe
    if total_steps and args.warmup_epochs >= args.epochs:
        warnings.warn(f"warmup_epochs={args.warmup_epochs} is not shorter than epochs={args.epochs}: the warm-up "
                      f"is cut to the run's first {max(total_steps - 1, 0)} of {total_steps} steps, so the lr peaks "
                      f"at the last step and no cosine decay follows; pass --warmup-epochs below --epochs",
                      stacklevel=2)
    optimizer = build_optimizer(model, lr, args.weight_decay, args.betas, layer_decay=args.layer_decay)
    scheduler = (build_scheduler(optimizer, total_steps, round(args.warmup_epochs * spe), args.min_lr)
                 if total_steps else None)
    mixer = VideoMixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                       switch_prob=args.mixup_switch_prob, mode="batch", label_smoothing=args.label_smoothing,
                       num_classes=num_classes) if use_mix else None
    settings = _settings(args, model, train_path, val_path, num_classes, info.world_size, lr, amp)
    settings["num_train"] = len(train_records)
    last_step = total_steps if args.max_steps is None else min(total_steps, args.max_steps)
    return FinetuneRun(args, settings, info, model, wrap_ddp(model, info), optimizer, scheduler, scaler, autocast,
                       mixer, _criterion(use_mix, args.label_smoothing), _train_set(args, model, train_records),
                       val_records, spe, total_steps, last_step,
                       Path(args.output_dir) / "checkpoints" / "finetune-last.pt")


def claim_run_dir(args, info):
    """Refuse an output folder holding a fine-tuning run unless resumed or overwritten; on overwrite,
    rank 0 deletes the old run (RUN_FILES) while the other ranks wait."""
    gone = claim_output_dir(args.output_dir, what="fine-tuning run", marks=RUN_MARKS, removes=RUN_FILES,
                            resume=args.resume, overwrite=args.overwrite, remove=info.is_main)
    if args.overwrite:
        barrier(info)
    if gone and info.is_main:
        print(f"--overwrite: deleted the previous run's {', '.join(gone)} in {args.output_dir}", flush=True)


def _settings(args, model, train_path, val_path, num_classes, world, lr, amp):
    a, cfg = args, model.config
    return {"checkpoint": str(a.checkpoint), "train_list": str(train_path), "val_list": str(val_path),
            "label_column": a.label_column, "num_classes": num_classes, "epochs": a.epochs,
            "batch_size_per_rank": a.batch_size, "world_size": world, "lr": lr, "base_lr": a.base_lr,
            "min_lr": a.min_lr, "warmup_epochs": a.warmup_epochs, "weight_decay": a.weight_decay,
            "layer_decay": a.layer_decay, "betas": list(a.betas), "drop_path": a.drop_path,
            "label_smoothing": a.label_smoothing, "mixup": a.mixup, "cutmix": a.cutmix, "mixup_prob": a.mixup_prob,
            "mixup_switch_prob": a.mixup_switch_prob, "randaug": a.randaug, "flip": a.flip,
            "sampling_rate": a.sampling_rate, "num_frames": cfg.num_frames, "img_size": list(cfg.img_size),
            "test_views": [a.test_clips, a.test_crops], "clip_grad": a.clip_grad, "max_steps": a.max_steps,
            "seed": a.seed, "label_fraction": a.label_fraction, "amp": amp}


def _criterion(use_mix, label_smoothing):
    if use_mix:  # mixup gives soft targets, label smoothing included
        from timm.loss import SoftTargetCrossEntropy
        return SoftTargetCrossEntropy()
    return torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def _train_set(args, model, train_records):
    from sigma.data import VideoDataset

    cfg = model.config
    ds = VideoDataset(train_records, num_frames=cfg.num_frames, sampling_rate=args.sampling_rate,
                      size=tuple(cfg.img_size), flip=args.flip, train=True, mask_ratio=None, tube_size=cfg.tube_size,
                      seed=args.seed)
    return _RandAugmented(ds, VideoRandAugment(args.randaug), args.seed) if args.randaug else ds


def resume_run(run, resume):
    """Load `resume` ("auto": OUTPUT_DIR/checkpoints/finetune-last.pt when present) into `run`."""
    path = run.ckpt_path if resume == "auto" else Path(resume)
    if not path.exists():
        if resume == "auto":
            return
        raise FileNotFoundError(f"resume: {path} does not exist")
    try:
        state = load_checkpoint(path, FINETUNE_FORMAT)
    except ValueError as e:
        raise ValueError(f"resume: {e}") from e
    num_classes = run.settings["num_classes"]
    if state["num_classes"] != num_classes:
        raise ValueError(f"resume: {path} has {state['num_classes']} classes, this task {num_classes}")
    try:
        run.model.load_state_dict(state["model"])
    except RuntimeError as e:  # another encoder: name what differs, not torch's pages of keys
        changed = config_changes(state.get("config", {}), run.settings)
        raise ValueError(f"resume: {path} does not fit this model ({listed_changes(changed) or 'its tensors differ'}); "
                         "resume with the settings it was written with") from e
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.step = int(state["step"])
    rank = run.info.rank
    set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
    if run.info.is_main:
        print(f"resumed from {path} at step {run.step}", flush=True)


def open_log(run):
    """OUTPUT_DIR/finetune_metrics.csv (rank 0; appended to on resume) and the progress bar."""
    if not run.info.is_main:
        return
    out = Path(run.args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "finetune_metrics.csv"
    new = not log_path.exists() or run.step == 0
    run.log_file = open(log_path, "w" if new else "a", newline="")
    if new:
        csv.writer(run.log_file).writerow(["step", "epoch", "loss", "lr"])
    if run.args.progress and run.last_step > run.step:
        from tqdm import tqdm
        run.pbar = tqdm(total=run.last_step, initial=run.step, desc="finetune", dynamic_ncols=True)


def train_one_epoch(run):
    """Optimizer steps from `run.step` to the end of its epoch (or `last_step`): log and checkpoint;
    on SIGINT/SIGTERM checkpoint and raise Interrupted."""
    a, info = run.args, run.info
    epoch, start = divmod(run.step, run.spe)
    sampler = ResumableDistributedSampler(run.train_ds, info.world_size, info.rank, seed=a.seed)
    sampler.set_epoch(epoch)
    sampler.set_start(start * a.batch_size)
    loader = torch.utils.data.DataLoader(run.train_ds, batch_size=a.batch_size, sampler=sampler, drop_last=True,
                                         num_workers=a.num_workers, pin_memory=info.device.type == "cuda",
                                         worker_init_fn=seed_worker,
                                         generator=torch.Generator().manual_seed(a.seed + epoch))
    run.net.train()
    for batch in loader:
        loss = train_step(run, batch)
        run.step += 1
        log_now = run.step % a.log_every == 0 or run.step == run.last_step
        if log_now:
            log_step(run, epoch, loss)
        if run.pbar is not None:
            run.pbar.update(1)
        stop = stop_agreed(run, log_now)
        if (a.save_every and run.step % a.save_every == 0) or run.step == run.last_step or run.step % run.spe == 0 \
                or stop:
            require_finite_state(run)
            save(run)
        if run.step >= run.last_step:
            break
        if stop:
            raise Interrupted(f"stopped by {signal_name(run.interrupt.signum or 15)} after step {run.step} of "
                              f"{run.last_step}; checkpoint written to {run.ckpt_path}; continue with --resume auto",
                              run.interrupt.signum or 15, is_main=info.is_main)


def _say(msg):
    print(f"[sigma.evaluate finetune] {msg}", file=sys.stderr, flush=True)


def stop_agreed(run, log_now):
    """Whether to stop after this step on a signal: at once in one process; under torchrun at log
    steps (which sync for the loss anyway), by an all-reduce of the ranks' flags, so all stop at the
    same step."""
    if run.interrupt is None:
        return False
    if run.info.world_size == 1:
        return run.interrupt.requested
    if not log_now:
        return False
    return all_reduce_mean(stop_flag(run.interrupt, run.info.device), run.info).item() > 0


def train_step(run, batch):
    """One optimizer step on `batch`; the loss (a device tensor: no host sync here)."""
    device = run.info.device
    video = batch["video"].to(device, non_blocking=True)
    target = batch["label"][:, run.args.label_column].to(device, non_blocking=True)
    if run.mixer is not None:
        video, target = run.mixer(video, target)
    run.scheduler.step_update(run.step)
    with run.autocast():
        logits = run.net(video)
    loss = run.criterion(logits.float(), target)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.args.clip_grad:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.args.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return loss.detach()


def log_step(run, epoch, loss):
    value = loss.item()  # one host sync every log_every steps
    if not math.isfinite(value):
        raise FloatingPointError(f"fine-tuning loss is {value} at step {run.step}")
    lr_now = max(g["lr"] for g in run.optimizer.param_groups)
    run.history.append(value)
    if run.log_file is not None:
        csv.writer(run.log_file).writerow([run.step, epoch, f"{value:.6f}", f"{lr_now:.6g}"])
        run.log_file.flush()
    if run.pbar is not None:
        run.pbar.set_postfix(loss=f"{value:.4f}", lr=f"{lr_now:.2e}")


def require_finite_state(run):
    """FloatingPointError, before a checkpoint would be written, when a weight went NaN or inf: the
    loss is checked every log_every steps only, and a diverged run must not replace its last good
    checkpoint. One host sync per save; every rank holds the same weights, so all raise together."""
    named = list(run.model.named_parameters())
    if not bool(all_finite([p for _, p in named])):
        bad = first_non_finite(named)
        raise FloatingPointError(f"fine-tuning weights are not finite at step {run.step} (first: {bad}); the last "
                                 f"checkpoint ({run.ckpt_path}, if any) is kept; lower --base-lr or set --clip-grad")


def save(run):
    """OUTPUT_DIR/checkpoints/finetune-last.pt (rank 0 writes; every rank's RNG state is kept)."""
    rngs = all_gather_object(rng_state(), run.info)
    if run.info.is_main:
        atomic_torch_save({"format": FINETUNE_FORMAT, "step": run.step, "epoch": run.step // max(run.spe, 1),
                           "num_classes": run.settings["num_classes"], "model_config": run.model.config.to_dict(),
                           "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                           "scaler": run.scaler.state_dict(), "rng": rngs, "config": run.settings,
                           "provenance": provenance(seed=run.args.seed)}, run.ckpt_path)


def test(run):
    """Multi-view test of the val list, sharded over ranks: (scores (n, K), labels (n,)) of all ranks,
    and the val files skipped on any rank (never replaced by other clips)."""
    from sigma.data import VideoDataset

    a, info, cfg = run.args, run.info, run.model.config
    test_ds = VideoDataset(run.val_records, num_frames=cfg.num_frames, sampling_rate=a.sampling_rate,
                           size=tuple(cfg.img_size), train=False, mask_ratio=None, tube_size=cfg.tube_size,
                           num_clips=a.test_clips, num_crops=a.test_crops, unreadable="skip")
    scores, labels, _ = multiview_scores(run.model, test_ds, batch_size=a.test_batch_size or a.batch_size,
                                         num_workers=a.num_workers, device=info.device,
                                         amp_dtype=amp_policy.amp_dtype(run.settings["amp"], info.device),
                                         label_column=a.label_column,
                                         indices=range(info.rank, len(run.val_records), info.world_size),
                                         progress=a.progress and info.is_main)
    parts = all_gather_object((scores, labels, test_ds.skipped_files), info)
    skipped = sorted(f for p in parts for f in p[2])
    parts = [p for p in parts if len(p[1])] or parts[:1]  # a rank may have read none of its clips
    scores, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if not len(labels):
        raise test_ds.no_readable_error()
    return scores, labels, skipped


def _skipped(ds):
    base = getattr(ds, "base", ds)
    return base.skipped_files


__all__ = ["build_classifier", "finetune", "multiview_scores"]
