"""Pretraining step: throughput of the tiny config and where the time of one step goes.

    python benchmarks/pretrain_step.py                    # tiny + ViT-S at one 16x224^2 clip, CPU
    python benchmarks/pretrain_step.py --cases vit_s --device cuda --batch 16

1. Breakdown (`--cases`): one optimizer step of a config's networks on random clips, split into
   video model (forward + backward), projection (forward + backward), loss (SinkhornSwapLoss
   forward + backward on detached copies of the features, so its own cost is isolated) and
   optimizer (AdamW step + zero_grad); plus the whole step timed in one piece. Median of
   `--repeats` after one warm-up step, every stage bracketed by a device synchronisation.
2. Throughput (`--tiny-steps`, CPU runs only): the tiny config trained end to end on a synthetic
   set (loader, augmentation, masking, step) through `sigma.pretrain.train`, clips/s from its
   metrics.csv, and the data loader alone over the same set (same workers), to show whether the
   loader is the bottleneck.

Writes benchmarks/results/<device>-<stamp>-pretrain_step.csv.
"""
import argparse
import csv
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import RESULTS_DIR, describe, device_slug, run_metadata, sync  # noqa: E402

CASES = {
    # name: (config, overrides)
    "tiny": ("tiny", []),
    "vit_s": ("vit_s_ssv2_mlp", []),
    "vit_b": ("vit_b_ssv2_mlp", []),
}
COLUMNS = ("benchmark", "machine", "device", "device_type", "torch", "commit", "date", "threads", "case", "config",
           "batch", "tokens", "masked_tokens", "K", "D", "stage", "median_ms", "share", "clips_per_s", "note")


def _timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, (time.perf_counter() - t0) * 1e3


def breakdown(case, batch, repeats, device, amp):
    from sigma.masking import tube_mask
    from sigma.pretrain import load_config
    from sigma.pretrain.optim import build_optimizer
    from sigma.pretrain.trainer import _factories, build_module

    config, overrides = CASES[case]
    cfg = load_config(config, [*overrides, f"optim.batch_size={batch}"])
    create_model, create_projection, _ = _factories()
    torch.manual_seed(0)
    module, model_cfg, _, _ = build_module(cfg, create_model, create_projection)
    module.to(device)
    opt = build_optimizer(module, 1e-4, 0.05, (0.9, 0.95))
    d = cfg["data"]
    t, s = d["num_frames"], d["img_size"]
    grid = (t // d["tubelet_size"], s // d["patch_size"], s // d["patch_size"])
    video = torch.randn(batch, 3, t, s, s, device=device)
    mask = tube_mask(batch, grid, d["mask_ratio"], generator=torch.Generator().manual_seed(0), device=device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    autocast = torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)
    crit = getattr(module, "criterion", None)
    if crit is not None:
        crit.compute_stats = False

    def staged():
        times = {}
        with autocast:
            pred, times["video model"] = _timed(lambda: module.model(video, mask), device)
            target, times["projection"] = _timed(lambda: module.projection(video, mask), device)
        pl, tl = pred.detach().requires_grad_(), target.detach().requires_grad_()

        def loss_fb():
            loss = crit(pl, tl, mask)
            loss.backward()
            return loss
        _, times["loss"] = _timed(loss_fb, device)
        _, bwd_model = _timed(lambda: pred.backward(pl.grad), device)
        _, bwd_proj = _timed(lambda: target.backward(tl.grad), device)
        times["video model"] += bwd_model
        times["projection"] += bwd_proj

        def step():
            opt.step()
            opt.zero_grad(set_to_none=True)
        _, times["optimizer"] = _timed(step, device)
        return times

    def whole():
        def run():
            with autocast:
                loss, _, _ = module(video, mask)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return _timed(run, device)[1]

    staged()  # warm-up (lazy init, allocator)
    runs = [staged() for _ in range(repeats)]
    wholes = [whole() for _ in range(repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    step_ms = statistics.median(wholes)
    total = sum(med.values())
    info = dict(case=case, config=config, batch=batch, tokens=mask.shape[1], masked_tokens=int(mask[0].sum()),
                K=cfg["objective"]["num_prototypes"], D=model_cfg["out_dim"])
    rows = [dict(info, stage=k, median_ms=v, share=v / total) for k, v in med.items()]
    rows.append(dict(info, stage="sum of stages", median_ms=total, share=1.0, clips_per_s=batch / total * 1e3))
    rows.append(dict(info, stage="whole step", median_ms=step_ms, clips_per_s=batch / step_ms * 1e3))
    return rows


def throughput(steps, videos, workers):
    """End-to-end clips/s of the tiny config and the loader's clips/s alone (CPU)."""
    from sigma.data.synthetic import make_synthetic_dataset
    from sigma.pretrain import load_config, train
    from sigma.pretrain.trainer import _factories, build_dataset

    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_dataset(tmp, videos=videos, seed=0)
        data = os.path.join(tmp, "train.txt")
        cfg = load_config("tiny", [f"optim.max_steps={steps}", "log.every=5", "log.tensorboard=false",
                                   f"data.num_workers={workers}", "checkpoint.every=100000"])
        out = os.path.join(tmp, "run")
        train(cfg, data, out)
        with open(os.path.join(out, "metrics.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        # the first interval includes worker start-up and warm-up
        train_cps = statistics.median(float(r["clips_per_s"]) for r in rows[1:]) if len(rows) > 1 else float("nan")
        ds = build_dataset(cfg, data, _factories()[2])
        bs = cfg["optim"]["batch_size"]
        loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=workers, drop_last=True)
        n, t0 = 0, None
        for _ in range(1000):
            for batch in loader:
                if t0 is None:
                    t0 = time.perf_counter()  # after the first batch: worker start-up excluded
                    continue
                n += batch["video"].shape[0]
                if n >= steps * bs:
                    break
            if n >= steps * bs:
                break
        loader_cps = n / (time.perf_counter() - t0)
    base = dict(case="tiny", config="tiny", batch=bs)
    return [dict(base, stage="train end to end", clips_per_s=train_cps,
                 note=f"median over metrics.csv intervals, {steps} steps, {workers} loader worker(s)"),
            dict(base, stage="data loader alone", clips_per_s=loader_cps,
                 note=f"{workers} worker(s), decode + augment + mask")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="tiny,vit_s", help=f"comma-separated, from {sorted(CASES)}")
    p.add_argument("--batch", type=int, default=None, help="clips per step (default: tiny's batch, 1 for ViT)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="auto", choices=("auto", "none", "fp16", "bf16"),
                   help="auto: fp16 on CUDA (the recipe), none on CPU")
    p.add_argument("--tiny-steps", type=int, default=40, help="end-to-end steps of the tiny config (0 skips)")
    p.add_argument("--videos", type=int, default=48, help="synthetic videos for the end-to-end run")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the tiny config's)")
    p.add_argument("--out", default=RESULTS_DIR)
    args = p.parse_args(argv)
    amp = args.amp if args.amp != "auto" else ("fp16" if torch.device(args.device).type == "cuda" else "none")
    meta = run_metadata("pretrain_step", args.device)
    print(describe(meta), flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{device_slug(meta)}-{meta['_stamp']}-pretrain_step.csv")
    base = {k: meta[k] for k in COLUMNS if k in meta}
    base["threads"] = torch.get_num_threads()
    rows = []

    def flush():  # rewritten after every case: an interrupted run keeps what it measured
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({**base, **r, "device_type": meta["device_type"]})

    from sigma.pretrain import load_config
    tiny = load_config("tiny")
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if case not in CASES:
            raise SystemExit(f"--cases: unknown case {case!r}; choose from {sorted(CASES)}")
        batch = args.batch or (tiny["optim"]["batch_size"] if case == "tiny" else 1)
        rows += breakdown(case, batch, args.repeats, args.device, amp)
        flush()
    if args.tiny_steps and torch.device(args.device).type == "cpu":
        workers = args.workers if args.workers is not None else tiny["data"]["num_workers"]
        rows += throughput(args.tiny_steps, args.videos, workers)
        flush()
    print(f"{'case':6} {'stage':20} {'median ms':>10} {'share':>6} {'clips/s':>8}")
    for r in rows:
        ms = f"{r['median_ms']:.1f}" if "median_ms" in r else ""
        share = f"{r['share']:.0%}" if "share" in r else ""
        cps = f"{r['clips_per_s']:.2f}" if r.get("clips_per_s") is not None else ""
        print(f"{r['case']:6} {r['stage']:20} {ms:>10} {share:>6} {cps:>8}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
