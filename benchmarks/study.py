"""A small-scale study of what the Sinkhorn swap buys: collapse, probing and segmentation.

    python benchmarks/study.py                    # the full study (CSV + PNG in benchmarks/results/)
    python benchmarks/study.py --quick --out DIR  # smoke test: tiny set, tiny clips, a few steps

On a synthetic set from `sigma.data.synthetic` (each clip: one labelled shape moving in one of four
directions over a textured background), the tiny model is pretrained with `sigma.pretrain` under
one fixed step budget with the objectives `pixel` (VideoMAE's normalised-pixel regression), `l2`
(regress an MLP projection's features of the masked tubes) and `sigma` (the Sinkhorn-guided
swapped prediction on the same MLP projection), each for several seeds. Per run, over training:
the loss terms, the collapse measures of the decoder's predictions and of the projection's targets
(logged by `sigma.pretrain`), the same measures of the encoder's tokens on fixed val clips (one
point per checkpoint), and the prototype usage perplexity. At the end, `sigma.evaluate`: k-NN and
linear-probe accuracy for the object label and for the motion label, and `segment` mIoU on the
synthetic masks. A randomly initialised encoder (no pretraining) is evaluated the same way as the
floor every objective has to beat.

Runs are resumable: a run whose `result.json` exists in the work folder is not redone, so several
`--only OBJECTIVE:SEED` processes can run in parallel and a final call collects the outputs.
"""
import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sigma.engine.files import atomic_write, atomic_write_text  # noqa: E402

OBJECTIVES = ("pixel", "l2", "sigma")
BASELINE = "random_init"  # the untrained encoder: the floor of every probe
FINAL_COLUMNS = ["objective", "seed", "steps", "train_seconds", "eval_seconds", "final_loss",
                 "pred_std", "pred_erank", "target_std", "target_erank", "encoder_std", "encoder_erank",
                 "usage_perplexity", "knn_object", "knn_motion", "linear_object", "linear_motion",
                 "segment_miou", "segment_miou_overclustering"]
CURVE_COLUMNS = ["objective", "seed", "step", "loss", "loss_v", "loss_p", "pred_std", "pred_erank",
                 "target_std", "target_erank", "usage_perplexity_v", "usage_perplexity_p", "encoder_std",
                 "encoder_erank"]
METRICS = ["knn_object", "knn_motion", "linear_object", "linear_motion", "segment_miou"]

# Full study: 112² clips of 8 frames (stride 4 over the 40-frame clips) with 2×16×16 tubes, a 4×7×7
# grid of 196 tokens; the 28-42 px objects cover two to three tokens each way. K = 64 prototypes:
# 8 clips × 176 masked tubes per step leaves ~22 tubes per prototype for the equipartition.
FULL = dict(videos=200, frames=40, size=128, object_size=(32, 48), img_size=112, num_frames=8, sampling_rate=4,
            patch_size=16, mask_ratio=0.9, batch_size=8, num_prototypes=64, out_dim=64, steps=144,
            checkpoints=4, num_workers=1, enc_clips=16, seg_max_clips=1, linear_epochs=100, knn_k=20)
# Smoke test: 32² clips of 4 frames, 2×2×2 tokens, a handful of steps: checks the plumbing only.
QUICK = dict(videos=8, frames=8, size=64, object_size=(16, 24), img_size=32, num_frames=4, sampling_rate=2,
             patch_size=16, mask_ratio=0.5, batch_size=2, num_prototypes=4, out_dim=16, steps=2,
             checkpoints=1, num_workers=0, enc_clips=2, seg_max_clips=1, linear_epochs=5, knn_k=3)


def write_csv(path, columns, rows):
    """Atomically write `rows` (dicts) with a fixed column order; missing values are left empty."""
    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    atomic_write(path, write)


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def make_data(work, s, seed=0):
    """The synthetic set in WORK/data (reused when it exists with the same settings)."""
    from sigma.data import make_synthetic_dataset
    out = Path(work) / "data"
    want = {k: s[k] for k in ("videos", "frames", "size")} | {"object_size": list(s["object_size"]), "seed": seed}
    stamp = out / "study_settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return out
    make_synthetic_dataset(out, videos=s["videos"], seed=seed, frames=s["frames"], size=s["size"],
                           object_size=tuple(s["object_size"]))
    write_json(stamp, want)
    return out


def pretrain_config(objective, seed, s, steps):
    """The resolved `sigma.pretrain` config of one run: the shipped tiny config with the study's sizes."""
    from sigma.pretrain import load_config
    train_clips = s["videos"] - s["videos"] // 4
    steps_per_epoch = max(1, train_clips // s["batch_size"])
    overrides = [
        ("seed", seed), ("device", "cpu"), ("amp", "none"),
        ("data.img_size", s["img_size"]), ("data.num_frames", s["num_frames"]),
        ("data.sampling_rate", s["sampling_rate"]), ("data.patch_size", s["patch_size"]),
        ("data.tubelet_size", 2), ("data.mask_ratio", s["mask_ratio"]),
        ("data.flip", False),  # left/right is half of the motion label, as on SSv2
        ("data.num_workers", s["num_workers"]), ("data.pin_memory", False),
        ("projection.kind", "mlp"), ("projection.out_dim", s["out_dim"]),
        ("objective.name", objective), ("objective.num_prototypes", s["num_prototypes"]),
        # The cosine schedule spans exactly the step budget (whole epochs, stopped at max_steps).
        ("optim.batch_size", s["batch_size"]), ("optim.epochs", math.ceil(steps / steps_per_epoch)),
        ("optim.warmup_epochs", max(1, math.ceil(steps / steps_per_epoch / 10))), ("optim.max_steps", steps),
        ("log.every", max(1, steps // 30)), ("log.stats_every", max(1, steps // 30)), ("log.tensorboard", False),
        ("checkpoint.every", max(1, steps // s["checkpoints"])), ("checkpoint.keep", None),
    ]
    return load_config("tiny", overrides)


def fixed_val_clips(data, s, n):
    """(n, C, T, H, W) float32: the first n val clips, centre view, as every encoder sees them."""
    from sigma.data import VideoDataset
    ds = VideoDataset(Path(data) / "val.txt", num_frames=s["num_frames"], sampling_rate=s["sampling_rate"],
                      size=s["img_size"], train=False, mask_ratio=None, tube_size=(2, s["patch_size"], s["patch_size"]))
    return torch.stack([ds[i]["video"] for i in range(min(n, len(ds)))])


@torch.no_grad()
def encoder_collapse(encoder, clips):
    """Collapse measures of the encoder's tokens (all clips' tokens as rows)."""
    from sigma.diagnostics import feature_collapse_stats
    tokens = encoder.eval().forward_features(clips)
    c = feature_collapse_stats(tokens, max_rows=tokens.shape[0] * tokens.shape[1])
    return float(c["std"]), float(c["erank"])


def evaluate_encoder(checkpoint, data, s, out_dir):
    """k-NN and linear probes (object and motion labels) and segment mIoU of one checkpoint."""
    import sigma.evaluate as ev
    common = dict(sampling_rate=s["sampling_rate"], device="cpu", amp="none", progress=False)
    r = {}
    for column, name in ((0, "object"), (1, "motion")):
        sub = Path(out_dir) / name
        sub.mkdir(parents=True, exist_ok=True)
        r[f"knn_{name}"] = ev.knn(checkpoint, data, sub, label_column=column, k=s["knn_k"], **common)["top1"]
        r[f"linear_{name}"] = ev.linear(checkpoint, data, sub, label_column=column, epochs=s["linear_epochs"],
                                        seed=0, **common)["top1"]
    seg = ev.segment(checkpoint, Path(data) / "davis", out_dir, split="val", max_clips=s["seg_max_clips"],
                     device="cpu", amp="none", progress=False)
    r["segment_miou"] = seg["miou_clustering"]
    r["segment_miou_overclustering"] = seg["miou_overclustering"]
    return r


def run_one(objective, seed, s, steps, data, work):
    """Pretrain (or, for the baseline, only initialise) one model, measure it, write WORK/<run>/result.json."""
    from sigma.models import create_encoder, save_pretrained
    run_dir = Path(work) / f"{objective}-seed{seed}"
    result_path = run_dir / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    clips = fixed_val_clips(data, s, s["enc_clips"])
    cfg = pretrain_config("sigma" if objective == BASELINE else objective, seed, s, steps)
    d = cfg["data"]
    model_kw = dict(num_frames=d["num_frames"], img_size=d["img_size"], patch_size=d["patch_size"],
                    tubelet_size=d["tubelet_size"])
    torch.manual_seed(seed)
    init = create_encoder(cfg["model"]["name"], **model_kw)
    enc_curve = [(0, *encoder_collapse(init, clips))]  # step 0: a fresh initialisation of the same config
    t0 = time.time()
    curves, final = [], {}
    if objective == BASELINE:
        checkpoint = run_dir / "encoder.safetensors"
        save_pretrained(init, checkpoint)
        train_seconds, steps_done = 0.0, 0
    else:
        from sigma.models import load_encoder
        from sigma.pretrain import train
        # no result.json: an earlier attempt did not finish; its partial run is replaced, never continued
        steps_done = train(cfg, str(Path(data) / "train.txt"), run_dir, overwrite=True)
        train_seconds = time.time() - t0
        ck_dir = run_dir / "checkpoints"
        for p in sorted(ck_dir.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1])):
            enc_curve.append((int(p.stem.split("-")[1]), *encoder_collapse(load_encoder(str(p)), clips)))
        checkpoint = ck_dir / "last.pt"
        curves = read_csv(run_dir / "metrics.csv")
    enc = {step: (sd, er) for step, sd, er in enc_curve}
    rows, seen = [], set()
    for r in curves:
        step = int(r["step"])
        row = {"objective": objective, "seed": seed, "step": step}
        row.update({k: float(r[k]) for k in CURVE_COLUMNS[3:] if r.get(k) not in (None, "")})
        if step in enc:
            row["encoder_std"], row["encoder_erank"] = enc[step]
        rows.append(row)
        seen.add(step)
    for step, (sd, er) in enc.items():
        if step not in seen:
            rows.append({"objective": objective, "seed": seed, "step": step, "encoder_std": sd, "encoder_erank": er})
    rows.sort(key=lambda r: r["step"])
    last = next((r for r in reversed(curves) if r.get("pred_std") not in (None, "")), {})
    for k in ("pred_std", "pred_erank", "target_std", "target_erank"):
        final[k] = float(last[k]) if last else None
    final["final_loss"] = float(curves[-1]["loss"]) if curves else None
    perp = [float(last[k]) for k in ("usage_perplexity_v", "usage_perplexity_p") if last.get(k) not in (None, "")]
    final["usage_perplexity"] = sum(perp) / len(perp) if perp else None
    final["encoder_std"], final["encoder_erank"] = enc_curve[-1][1:]
    t1 = time.time()
    final.update(evaluate_encoder(str(checkpoint), data, s, run_dir / "eval"))
    result = {"objective": objective, "seed": seed, "steps": steps_done, "train_seconds": round(train_seconds, 1),
              "eval_seconds": round(time.time() - t1, 1), **final, "curves": rows}
    write_json(result_path, result)
    return result


def plot(results, path, title):
    """Curves over training (one colour per objective, one line per seed) and a bar chart of the
    final metrics (mean over seeds, seeds as dots)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = {"pixel": "tab:blue", "l2": "tab:red", "sigma": "tab:green", BASELINE: "tab:gray"}
    panels = [("loss", "loss (log)", True), ("target_erank", "projection target eff. rank", False),
              ("pred_erank", "decoder prediction eff. rank", False),
              ("encoder_erank", "encoder token eff. rank", False),
              ("encoder_std", "encoder token std (L2-normed)", False),
              ("usage_perplexity_v", "prototype usage perplexity", False)]
    fig = plt.figure(figsize=(16, 9))
    gs = fig.add_gridspec(2, 4)
    for i, (key, label, logy) in enumerate(panels):
        ax = fig.add_subplot(gs[i // 3, i % 3])
        for r in results:
            pts = [(c["step"], c[key]) for c in r["curves"] if c.get(key) is not None and math.isfinite(c[key])]
            if pts:
                ax.plot(*zip(*pts), color=colours.get(r["objective"], "k"), alpha=0.8, marker=".",
                        label=f"{r['objective']} s{r['seed']}")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        if logy:
            ax.set_yscale("log")
        if i == 0:
            ax.legend(fontsize=7)
    ax = fig.add_subplot(gs[:, 3])
    objectives = [o for o in (*OBJECTIVES, BASELINE) if any(r["objective"] == o for r in results)]
    for j, o in enumerate(objectives):
        runs = [r for r in results if r["objective"] == o]
        vals = [[100 * r[m] if m.startswith("segment") else r[m] for r in runs] for m in METRICS]
        ys = [j + k * (len(objectives) + 1) for k in range(len(METRICS))]
        ax.barh(ys, [sum(v) / len(v) for v in vals], height=0.9, color=colours.get(o, "k"), label=o)
        for y, v in zip(ys, vals):
            ax.plot(v, [y] * len(v), "k.", ms=4)
    ax.set_yticks([(len(objectives) - 1) / 2 + k * (len(objectives) + 1) for k in range(len(METRICS))])
    ax.set_yticklabels(["k-NN object", "k-NN motion", "linear object", "linear motion", "segment mIoU"])
    ax.invert_yaxis()
    ax.set_xlabel("% (accuracy top-1 / mIoU×100); dots = seeds")
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def markdown_table(results):
    """A README table: per objective, mean over seeds (each seed's value in brackets)."""
    cols = [("knn_object", "k-NN object %", 1), ("knn_motion", "k-NN motion %", 1),
            ("linear_object", "linear object %", 1), ("linear_motion", "linear motion %", 1),
            ("segment_miou", "segment mIoU", 3), ("encoder_erank", "encoder eff. rank", 1),
            ("encoder_std", "encoder std", 4), ("target_erank", "target eff. rank", 1),
            ("target_std", "target std", 4), ("usage_perplexity", "usage perplexity", 1)]
    lines = ["| objective | seeds | " + " | ".join(c[1] for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for o in (*OBJECTIVES, BASELINE):
        runs = [r for r in results if r["objective"] == o]
        if not runs:
            continue
        cells = []
        for key, _, nd in cols:
            vals = [r[key] for r in runs if r.get(key) is not None]
            cells.append(f"{sum(vals) / len(vals):.{nd}f} ({', '.join(f'{v:.{nd}f}' for v in vals)})" if vals else "–")
        lines.append(f"| `{o}` | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny set and clips, a few steps, one seed")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where study.csv, study_curves.csv "
                   "and study.png go (default benchmarks/results)")
    p.add_argument("--work", default=None, help="data and run folders (default OUT/study_work)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per run (default 144: 8 epochs of the 150 training clips; quick 2)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1; quick 0)")
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    p.add_argument("--only", nargs="+", default=None, metavar="OBJECTIVE:SEED",
                   help="run only these runs (objective or random_init) and do not collect")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    s = dict(QUICK if args.quick else FULL)
    steps = args.steps if args.steps is not None else s["steps"]
    if steps < 1:
        raise SystemExit(f"--steps must be a positive integer, got {steps}")
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1])
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "study_work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if args.only:
        todo = []
        for item in args.only:
            obj, _, seed = item.partition(":")
            if obj not in (*OBJECTIVES, BASELINE) or not seed.lstrip("-").isdigit():
                raise SystemExit(f"--only expects OBJECTIVE:SEED with OBJECTIVE in {(*OBJECTIVES, BASELINE)}, "
                                 f"got {item!r}")
            todo.append((obj, int(seed)))
    else:
        todo = [(o, sd) for sd in seeds for o in (*args.objectives, BASELINE)]
    data = make_data(work, s)
    results = []
    for obj, seed in todo:
        print(f"[study] {obj} seed {seed}: {steps} steps", file=sys.stderr, flush=True)
        r = run_one(obj, seed, s, steps, data, work)
        print(f"[study] {obj} seed {seed}: train {r['train_seconds']} s, eval {r['eval_seconds']} s, "
              + ", ".join(f"{m} {r[m]:.3g}" for m in METRICS), file=sys.stderr, flush=True)
        results.append(r)
    if args.only:
        return results
    stem = "study_quick" if args.quick else "study"
    write_csv(out / f"{stem}.csv", FINAL_COLUMNS, results)
    write_csv(out / f"{stem}_curves.csv", CURVE_COLUMNS, [c for r in results for c in r["curves"]])
    plot(results, out / f"{stem}.png",
         f"tiny ViT, {s['num_frames']}x{s['img_size']}² clips, {s['patch_size']}-px tubes, {steps} steps, "
         f"batch {s['batch_size']}, {s['videos']} synthetic videos, seeds {seeds}")
    print(markdown_table(results))
    print(f"[study] wrote {out / (stem + '.csv')}, {out / (stem + '_curves.csv')}, {out / (stem + '.png')}",
          file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
