"""Pretraining step: one SIGMA step against one pixel (VideoMAE) step, and where the time goes.

    python benchmarks/pretrain_step.py                     # ViT-S and ViT-B, 16x224², batch 1, CPU
    python benchmarks/pretrain_step.py --cases vit_s,vit_b --device cuda --batch 16

For each model size and objective (`sigma`: MLP projection + SinkhornSwapLoss; `pixel`: VideoMAE's
normalised-pixel MSE), the same encoder and decoder (the shipped `*_ssv2_mlp` config, only
`objective.name` changed) take one optimizer step on random clips, split into
- model: encoder + decoder, forward + backward;
- projection: the target branch, forward (+ backward for sigma's trained MLP; the pixel target
  is a fixed normalisation without parameters);
- loss: the objective alone, forward + backward, on detached copies of the features, computed by
  the same `PretrainModule.forward` the trainer runs (model and projection replaced by their
  outputs), so its own cost is isolated;
- optimizer: AdamW step + zero_grad;
and the whole step in one piece. Median of `--repeats` after one warm-up step; every stage is
bracketed by a device synchronisation. `vs_pixel` = this whole step / the pixel whole step of the
same model. With `--tiny-steps N` (CPU) the tiny config also trains N steps end to end on a
synthetic set through `sigma.pretrain.train`, next to its data loader alone.

Writes <out>/<device>-<stamp>-pretrain_step.csv (default out: benchmarks/results).
"""
import argparse
import csv
import io
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _report as report  # noqa: E402
from benchmarks._measure import sync  # noqa: E402

CASES = {"tiny": "tiny", "vit_s": "vit_s_ssv2_mlp", "vit_b": "vit_b_ssv2_mlp"}  # case: shipped config
OBJECTIVES = ("sigma", "pixel")
STAGES = ("model", "projection", "loss", "optimizer")
COLUMNS = ("benchmark", "machine", "device", "device_type", "torch", "commit", "date", "threads", "case", "config",
           "objective", "amp", "batch", "tokens", "masked_tokens", "K", "D", "stage", "median_ms", "share",
           "vs_pixel", "clips_per_s", "note")


class _Given(nn.Module):
    """Stands in for the model or the projection: returns a fixed tensor (to time the loss alone)."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, video, mask):
        return self.out


def _timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, (time.perf_counter() - t0) * 1e3


def _setup(case, objective, batch, device, overrides=()):
    from sigma.engine.optim import build_optimizer
    from sigma.masking import tube_mask
    from sigma.pretrain import load_config
    from sigma.pretrain.trainer import _factories, build_module

    cfg = load_config(CASES[case], [f"objective.name={objective}", f"optim.batch_size={batch}", *overrides])
    create_model, create_projection, _ = _factories()
    torch.manual_seed(0)
    module, model_cfg, _, _ = build_module(cfg, create_model, create_projection)
    module.to(device)
    opt = build_optimizer(module, 1e-4, 0.05, (0.9, 0.95))
    d = cfg["data"]
    grid = (d["num_frames"] // d["tubelet_size"], d["img_size"] // d["patch_size"], d["img_size"] // d["patch_size"])
    video = torch.randn(batch, 3, d["num_frames"], d["img_size"], d["img_size"], device=device)
    mask = tube_mask(batch, grid, d["mask_ratio"], generator=torch.Generator().manual_seed(0), device=device)
    info = dict(case=case, config=CASES[case], objective=objective, batch=batch, tokens=mask.shape[1],
                masked_tokens=int(mask[0].sum()), D=model_cfg["out_dim"],
                K=cfg["objective"]["num_prototypes"] if objective == "sigma" else "")
    return module, opt, video, mask, info


def breakdown(case, objective, batch, repeats, device, amp, overrides=()):
    """Rows of per-stage medians, their sum and the whole step for one (case, objective)."""
    module, opt, video, mask, info = _setup(case, objective, batch, device, overrides)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    device_type = torch.device(device).type
    crit = getattr(module, "criterion", None)

    def staged():
        times = {}
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            pred, times["model"] = _timed(lambda: module.model(video, mask), device)
            grad_target = objective != "pixel"  # the pixel target is computed without gradient, as the trainer does
            with torch.set_grad_enabled(grad_target):
                target, times["projection"] = _timed(lambda: module.projection(video, mask), device)
            pl = pred.detach().requires_grad_()
            tl = target.detach().requires_grad_(grad_target)
            loss_only = type(module)(objective, _Given(pl), _Given(tl), crit)

            def loss_fb():
                loss, _, _ = loss_only(video, mask)
                loss.backward()
            _, times["loss"] = _timed(loss_fb, device)
        _, bwd = _timed(lambda: pred.backward(pl.grad), device)
        times["model"] += bwd
        if grad_target:
            _, bwd = _timed(lambda: target.backward(tl.grad), device)
            times["projection"] += bwd

        def step():
            opt.step()
            opt.zero_grad(set_to_none=True)
        _, times["optimizer"] = _timed(step, device)
        return times

    def whole():
        def run():
            with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
                loss, _, _ = module(video, mask)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return _timed(run, device)[1]

    staged()  # warm-up (lazy initialisation, allocator, kernel compilation)
    runs = [staged() for _ in range(repeats)]
    wholes = [whole() for _ in range(repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in STAGES}
    total = sum(med.values())
    step_ms = statistics.median(wholes)
    info["amp"] = amp
    rows = [dict(info, stage=k, median_ms=v, share=v / total) for k, v in med.items()]
    rows.append(dict(info, stage="sum of stages", median_ms=total, share=1.0, clips_per_s=batch / total * 1e3))
    rows.append(dict(info, stage="whole step", median_ms=step_ms, clips_per_s=batch / step_ms * 1e3))
    return rows


def fill_vs_pixel(rows):
    """vs_pixel on every 'whole step' row: its time over the pixel objective's for the same case and batch."""
    pixel = {(r["case"], r["batch"]): r["median_ms"] for r in rows
             if r.get("stage") == "whole step" and r.get("objective") == "pixel"}
    for r in rows:
        ref = pixel.get((r.get("case"), r.get("batch")))
        if r.get("stage") == "whole step" and ref:
            r["vs_pixel"] = r["median_ms"] / ref


def throughput(steps, videos, workers, overrides=()):
    """End-to-end clips/s of the tiny config and the loader's clips/s alone (CPU)."""
    from sigma.data.synthetic import make_synthetic_dataset
    from sigma.pretrain import load_config, train
    from sigma.pretrain.trainer import _factories, build_dataset

    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_dataset(tmp, videos=videos, seed=0)
        data = os.path.join(tmp, "train.txt")
        cfg = load_config("tiny", [f"optim.max_steps={steps}", "log.every=1", "log.tensorboard=false",
                                   f"data.num_workers={workers}", "checkpoint.every=100000", *overrides])
        out = os.path.join(tmp, "run")
        train(cfg, data, out)
        with open(os.path.join(out, "metrics.csv"), newline="") as f:
            logged = list(csv.DictReader(f))
        # the first interval includes worker start-up and warm-up
        train_cps = statistics.median(float(r["clips_per_s"]) for r in logged[1:]) if len(logged) > 1 else float("nan")
        ds = build_dataset(cfg, data, _factories()[2])
        bs = cfg["optim"]["batch_size"]
        loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=workers, drop_last=True)
        if len(loader) < 2:
            raise SystemExit(f"--videos {videos} gives fewer than 2 batches of {bs}: nothing to time")
        n, t0 = 0, None
        while n < steps * bs:
            for batch in loader:
                if t0 is None:
                    t0 = time.perf_counter()  # after the first batch: worker start-up excluded
                    continue
                n += batch["video"].shape[0]
                if n >= steps * bs:
                    break
        loader_cps = n / (time.perf_counter() - t0)
    base = dict(case="tiny", config="tiny", objective="sigma", batch=bs)
    return [dict(base, stage="train end to end", clips_per_s=train_cps,
                 note=f"median over metrics.csv intervals, {steps} steps, {workers} loader worker(s)"),
            dict(base, stage="data loader alone", clips_per_s=loader_cps,
                 note=f"{workers} worker(s), decode + augment + mask")]


def _csv_text(rows, base):
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**base, **{k: report._fmt(v) for k, v in r.items()}})
    return buf.getvalue()


def _print(rows):
    print(f"{'case':6} {'objective':9} {'stage':18} {'median ms':>10} {'share':>6} {'vs pixel':>8} {'clips/s':>8}")
    for r in rows:
        ms = f"{r['median_ms']:.1f}" if "median_ms" in r else ""
        share = f"{r['share']:.0%}" if "share" in r else ""
        vs = f"{r['vs_pixel']:.2f}x" if "vs_pixel" in r else ""
        cps = f"{r['clips_per_s']:.2f}" if r.get("clips_per_s") is not None else ""
        print(f"{r['case']:6} {r['objective']:9} {r['stage']:18} {ms:>10} {share:>6} {vs:>8} {cps:>8}")


def main(argv=None):
    from sigma.engine.files import atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="vit_s,vit_b", help=f"comma-separated, from {sorted(CASES)}")
    p.add_argument("--objectives", default=",".join(OBJECTIVES), help=f"comma-separated, from {OBJECTIVES}")
    p.add_argument("--batch", type=int, default=1, help="clips per step (default 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="auto", choices=("auto", "none", "fp16", "bf16"),
                   help="auto: fp16 on CUDA (the recipe), none on CPU")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every case (e.g. data.num_frames=4), repeatable")
    p.add_argument("--tiny-steps", type=int, default=0, help="end-to-end steps of the tiny config, CPU (0 skips)")
    p.add_argument("--videos", type=int, default=48, help="synthetic videos for the end-to-end run")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the tiny config's)")
    p.add_argument("--out", default=report.RESULTS_DIR)
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    for name, given, known in (("--cases", cases, CASES), ("--objectives", objectives, OBJECTIVES)):
        bad = [c for c in given if c not in known] or ([] if given else ["(empty)"])
        if bad:
            raise SystemExit(f"{name}: unknown {bad[0]!r}; choose from {sorted(known)}")
    if args.batch < 1 or args.repeats < 1:
        raise SystemExit(f"--batch and --repeats must be >= 1, got {args.batch} and {args.repeats}")
    device_type = torch.device(args.device).type
    amp = args.amp if args.amp != "auto" else ("fp16" if device_type == "cuda" else "none")
    meta = report.run_metadata("pretrain_step", args.device)
    print(report.describe(meta), flush=True)
    path = os.path.join(args.out, f"{report.device_slug(meta)}-{meta['_stamp']}-pretrain_step.csv")
    base = {k: meta[k] for k in COLUMNS if k in meta}
    base["threads"] = torch.get_num_threads()
    rows = []
    for case in cases:
        for objective in objectives:
            rows += breakdown(case, objective, args.batch, args.repeats, args.device, amp, args.set)
            fill_vs_pixel(rows)
            atomic_write_text(path, _csv_text(rows, base))  # after every case: an interrupted run keeps what it did
    if args.tiny_steps and device_type == "cpu":
        from sigma.pretrain import load_config
        workers = args.workers if args.workers is not None else load_config("tiny")["data"]["num_workers"]
        rows += throughput(args.tiny_steps, args.videos, workers, args.set)
        atomic_write_text(path, _csv_text(rows, base))
    _print(rows)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
