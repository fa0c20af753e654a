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
draws its share of one seeded permutation per epoch; only rank 0 writes). Checkpoints
(`OUTPUT_DIR/checkpoints/finetune-last.pt`, atomically) hold model, optimizer, scaler, step, epoch
and RNG states; `resume="auto"` continues from it, mid-epoch included: the sample order, every
sample's augmentation (seeded from (seed, epoch, index)) and the mixup draws are replayed.
"""
import csv
import datetime
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from sigma.engine.config import defaults_from
from sigma.pretrain.checkpoint import rng_state, set_rng_state
from sigma.pretrain.distributed import join_process_group

from .augment import VideoMixup, VideoRandAugment, randaugment_normalized_clip
from .common import (
    amp_dtype_for,
    atomic_torch_save,
    labelled_splits,
    provenance,
    resolve_device,
    write_json,
)
from .config import FinetuneConfig
from .metrics import classification_metrics

# v2: the RNG states in sigma.pretrain.checkpoint's layout (v1 files cannot be resumed)
CHECKPOINT_FORMAT = "sigma-finetune-v2"


# --- distributed (minimal: process group from torchrun's environment) ------------------------------

def _dist_info():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _init_distributed(device):
    """Initialise the default process group when launched by torchrun (WORLD_SIZE > 1)."""
    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    rank = int(os.environ.get("RANK", "0"))
    join_process_group("nccl" if device.type == "cuda" else "gloo", rank, world, datetime.timedelta(seconds=1800))
    return device


# --- data ------------------------------------------------------------------------------------------

class _RandAugmented(torch.utils.data.Dataset):
    """A train VideoDataset whose clips get `VideoRandAugment`, seeded from (seed, draw, index) so a
    sample's augmentation does not depend on the worker or on what was drawn before (exact resume).
    The global Python/NumPy generators timm uses are restored afterwards."""

    def __init__(self, base, randaug, seed):
        from sigma.data import IMAGENET_MEAN, IMAGENET_STD
        self.base, self.randaug, self.seed = base, randaug, seed
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        sample = self.base[key]
        index, draw = key
        state = random.getstate(), np.random.get_state()
        s = np.random.SeedSequence([self.seed, 7, int(draw), int(index)]).generate_state(1)[0]
        random.seed(int(s))
        np.random.seed(int(s))
        try:
            sample["video"] = randaugment_normalized_clip(sample["video"], self.randaug, self.mean, self.std)
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])
        return sample


class _EpochBatches(torch.utils.data.Sampler):
    """This rank's batches of (index, epoch) keys of one seeded permutation, from batch `start` on."""

    def __init__(self, n, batch_size, epoch, seed, rank, world, start=0):
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        per_rank = n // world  # drop the tail so every rank runs the same number of steps
        mine = perm[rank * per_rank:(rank + 1) * per_rank]
        nb = len(mine) // batch_size  # drop_last: mixup needs full even batches
        self.batches = [[(i, epoch) for i in mine[b * batch_size:(b + 1) * batch_size]] for b in range(start, nb)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def steps_per_epoch(n, batch_size, world):
    return (n // world) // batch_size


# --- model and optimisation ---------------------------------------------------------------------------

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


def build_optimizer(model, lr, weight_decay=0.05, layer_decay=0.75, betas=(0.9, 0.999)):
    """AdamW over timm's layer-decay parameter groups (each group's lr_scale = layer_decay^(depth - layer))."""
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(model, weight_decay=weight_decay,
                                      no_weight_decay_list=list(model.no_weight_decay()), layer_decay=layer_decay)
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def build_scheduler(optimizer, total_steps, warmup_steps, min_lr=1e-6):
    """Per-step linear warmup from 0, then cosine decay to min_lr (timm; applies each group's lr_scale)."""
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(optimizer, t_initial=max(1, total_steps - warmup_steps), lr_min=min_lr,
                             warmup_t=warmup_steps, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)


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

@defaults_from(FinetuneConfig)
def finetune(checkpoint, data, output_dir, *, train_list, val_list, label_column, classes, epochs, batch_size,
             base_lr, min_lr, warmup_epochs, weight_decay, layer_decay, betas, drop_path, label_smoothing, mixup,
             cutmix, mixup_prob, mixup_switch_prob, randaug, flip, sampling_rate, test_clips, test_crops,
             test_batch_size, clip_grad, max_steps, save_every, log_every, seed, num_workers, device, amp, resume,
             progress):
    """Fine-tune the encoder of `checkpoint` on DATA/train.txt and test on DATA/val.txt (multi-view).

    Returns (and writes to OUTPUT_DIR/finetune.json) top1, top5, mean_class_accuracy (%) of the
    multi-view test, with the recipe used; the fine-tuned model is in
    OUTPUT_DIR/checkpoints/finetune-last.pt, the per-step log in OUTPUT_DIR/finetune_metrics.csv.
    `max_steps` stops early (the schedule still spans `epochs`); `epochs=0` only tests.
    `resume`: None, "auto" (OUTPUT_DIR/checkpoints/finetune-last.pt if present) or a path.
    """
    from timm.loss import SoftTargetCrossEntropy

    from sigma.data import VideoDataset

    t0 = time.time()
    out = Path(output_dir)
    device = _init_distributed(resolve_device(device))
    rank, world = _dist_info()
    amp_dtype = amp_dtype_for(device, amp)
    train_path, val_path, train_records, val_records, num_classes = labelled_splits(
        data, train_list, val_list, label_column, classes)
    use_mix = mixup > 0 or cutmix > 0
    if use_mix and batch_size % 2:
        raise ValueError(f"batch_size must be even with mixup/cutmix (timm mixes a batch with its flip), "
                         f"got {batch_size}")
    spe = steps_per_epoch(len(train_records), batch_size, world)
    if epochs > 0 and spe == 0:
        raise ValueError(f"{len(train_records)} training clips over {world} rank(s) do not fill one batch of "
                         f"{batch_size}")

    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint {str(checkpoint)!r} does not exist")
    model = build_classifier(checkpoint, num_classes, drop_path_rate=drop_path).to(device)
    cfg = model.config
    num_frames, size, tube = cfg.num_frames, tuple(cfg.img_size), cfg.tube_size
    global_batch = batch_size * world
    lr = base_lr * global_batch / 256
    total_steps = epochs * spe
    warmup_steps = min(int(round(warmup_epochs * spe)), total_steps)
    optimizer = build_optimizer(model, lr, weight_decay, layer_decay, betas)
    scheduler = build_scheduler(optimizer, total_steps, warmup_steps, min_lr) if total_steps else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    mixer = VideoMixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mixup_prob, switch_prob=mixup_switch_prob,
                       mode="batch", label_smoothing=label_smoothing, num_classes=num_classes) if use_mix else None
    criterion = SoftTargetCrossEntropy() if use_mix else torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    step, history = 0, []
    ckpt_path = out / "checkpoints" / "finetune-last.pt"
    if resume:
        rpath = ckpt_path if resume == "auto" else Path(resume)
        if rpath.exists():
            from sigma.models import safe_torch_load
            state = safe_torch_load(rpath)
            if state.get("format") != CHECKPOINT_FORMAT:
                fmt = state.get("format")
                older = isinstance(fmt, str) and fmt.startswith("sigma-finetune-")
                raise ValueError(f"resume: {rpath} is " + (f"a fine-tuning checkpoint of an older format ({fmt!r}, "
                                 f"this version resumes {CHECKPOINT_FORMAT!r}); start a new run" if older else
                                 f"not a fine-tuning checkpoint (format {fmt!r})"))
            if state["num_classes"] != num_classes:
                raise ValueError(f"resume: {rpath} has {state['num_classes']} classes, this task {num_classes}")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            step = int(state["step"])
            set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
            if rank == 0:
                print(f"resumed from {rpath} at step {step}", flush=True)
        elif resume != "auto":
            raise FileNotFoundError(f"resume: {rpath} does not exist")

    ddp_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    train_ds = VideoDataset(train_records, num_frames=num_frames, sampling_rate=sampling_rate, size=size,
                            flip=flip, train=True, mask_ratio=None, tube_size=tube, seed=seed)
    if randaug:
        train_ds = _RandAugmented(train_ds, VideoRandAugment(randaug), seed)
    last_step = total_steps if max_steps is None else min(total_steps, max_steps)
    writer = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        log_path = out / "finetune_metrics.csv"
        new = not log_path.exists() or step == 0
        log_file = open(log_path, "w" if new else "a", newline="")
        writer = csv.writer(log_file)
        if new:
            writer.writerow(["step", "epoch", "loss", "lr"])

    def save(epoch):
        rngs = [rng_state()]
        if world > 1:
            import torch.distributed as dist
            gathered = [None] * world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if rank == 0:
            atomic_torch_save({"format": CHECKPOINT_FORMAT, "step": step, "epoch": epoch, "num_classes": num_classes,
                               "model_config": cfg.to_dict(), "model": model.state_dict(),
                               "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rngs,
                               "config": settings, "provenance": provenance(seed=seed)}, ckpt_path)

    settings = {"checkpoint": str(checkpoint), "train_list": str(train_path), "val_list": str(val_path),
                "label_column": label_column, "num_classes": num_classes, "epochs": epochs,
                "batch_size_per_rank": batch_size, "world_size": world, "lr": lr, "base_lr": base_lr,
                "min_lr": min_lr, "warmup_epochs": warmup_epochs, "weight_decay": weight_decay,
                "layer_decay": layer_decay, "betas": list(betas), "drop_path": drop_path,
                "label_smoothing": label_smoothing, "mixup": mixup, "cutmix": cutmix, "mixup_prob": mixup_prob,
                "mixup_switch_prob": mixup_switch_prob, "randaug": randaug, "flip": flip,
                "sampling_rate": sampling_rate, "num_frames": num_frames, "img_size": list(size),
                "test_views": [test_clips, test_crops], "clip_grad": clip_grad, "max_steps": max_steps,
                "seed": seed, "amp": str(amp_dtype) if amp_dtype else "fp32"}

    pbar = None
    if progress and rank == 0 and last_step > step:
        from tqdm import tqdm
        pbar = tqdm(total=last_step, initial=step, desc="finetune", dynamic_ncols=True)
    while step < last_step:
        epoch, start = divmod(step, spe)
        sampler = _EpochBatches(len(train_records), batch_size, epoch, seed, rank, world, start)
        # own generator: creating the iterator must not draw from the global RNG (exact resume)
        loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, num_workers=num_workers,
                                             pin_memory=device.type == "cuda", generator=torch.Generator(),
                                             worker_init_fn=_worker_init if num_workers else None)
        ddp_model.train()
        for batch in loader:
            video = batch["video"].to(device, non_blocking=True)
            target = batch["label"][:, label_column].to(device, non_blocking=True)
            if mixer is not None:
                video, target = mixer(video, target)
            scheduler.step_update(step)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = ddp_model(video)
            loss = criterion(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if step % log_every == 0 or step == last_step:
                value = loss.item()  # one host sync every log_every steps
                if not math.isfinite(value):
                    raise FloatingPointError(f"fine-tuning loss is {value} at step {step}")
                lr_now = max(g["lr"] for g in optimizer.param_groups)
                history.append(value)
                if writer is not None:
                    writer.writerow([step, epoch, f"{value:.6f}", f"{lr_now:.6g}"])
                    log_file.flush()
                if pbar is not None:
                    pbar.set_postfix(loss=f"{value:.4f}", lr=f"{lr_now:.2e}")
            if pbar is not None:
                pbar.update(1)
            if (save_every and step % save_every == 0) or step == last_step or step % spe == 0:
                save(step // spe)
            if step >= last_step:
                break
    if pbar is not None:
        pbar.close()
    if writer is not None:
        log_file.close()
    if total_steps == 0 or step == 0:
        save(0)

    # multi-view test, sharded over ranks
    test_ds = VideoDataset(val_records, num_frames=num_frames, sampling_rate=sampling_rate, size=size, train=False,
                           mask_ratio=None, tube_size=tube, num_clips=test_clips, num_crops=test_crops,
                           unreadable="skip")
    scores, labels, _ = multiview_scores(model, test_ds, batch_size=test_batch_size or batch_size,
                                           num_workers=num_workers, device=device, amp_dtype=amp_dtype,
                                           label_column=label_column,
                                           indices=range(rank, len(val_records), world),
                                           progress=progress and rank == 0)
    if world > 1:
        import torch.distributed as dist
        parts = [None] * world
        dist.all_gather_object(parts, (scores, labels, test_ds.skipped_files))
        test_skipped = sorted(f for p in parts for f in p[2])
        parts = [p for p in parts if len(p[1])] or parts[:1]  # a rank may have read none of its clips
        scores = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
    else:
        test_skipped = test_ds.skipped_files
    if not len(labels):
        raise test_ds.no_readable_error()
    result = {"task": "finetune", **classification_metrics(scores, labels, num_classes), **settings,
              "steps": step, "final_train_loss": history[-1] if history else None,
              "test_skipped_files": test_skipped, "train_skipped_files": _skipped(train_ds),
              "checkpoint_out": str(ckpt_path), "seconds": time.time() - t0, "provenance": provenance()}
    if rank == 0:
        write_json(out / "finetune.json", result)
    return result


def _skipped(ds):
    base = getattr(ds, "base", ds)
    return base.skipped_files


def _worker_init(worker_id):
    # distinct global streams per worker; every sample reseeds what it uses (_RandAugmented)
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


__all__ = ["build_classifier", "build_optimizer", "build_scheduler", "finetune", "multiview_scores"]
