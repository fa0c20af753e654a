"""A small-scale study of what the Sinkhorn swap buys: collapse, probing, few-label fine-tuning and
segmentation, against untrained encoders (protocol: docs/study.md).

    python benchmarks/study.py --data digits              # the study of docs/study.md (resumable)
    python benchmarks/study.py --data digits --quick --out DIR   # smoke test: tiny set, a few steps
    python benchmarks/study.py                            # the older shapes study

The tiny model is pretrained with `sigma.pretrain` under one fixed step budget with the objectives
`pixel` (VideoMAE's normalised-pixel regression), `l2` (regress an MLP projection's features of
the masked tubes), `sigma_hard` and `sigma_soft` (the Sinkhorn-guided swapped prediction on the same
MLP projection, hard or soft targets), each for several seeds. Per run, over training: the loss
terms, the collapse measures of the decoder's predictions and of the projection's targets (logged
by `sigma.pretrain`), the same measures of the encoder's tokens on fixed val clips (one point per
checkpoint), the prototype usage perplexity and clips/s. At the end, `sigma.evaluate` only: k-NN,
linear (mean-pooled) and attentive probes for the object and the motion label, `segment` mIoU on
the set's masks, and (digits) fine-tuning on label fractions of the train list. Untrained encoders
(`sigma.pretrain.initial.export_initial_encoder`, the weights a sigma run of that seed starts from,
exported and given to `sigma.evaluate` as a checkpoint) are evaluated the same way as the floor, and
fine-tuned from scratch as the few-label baseline.

Resumable: every step writes its own file under WORK (a pretraining run's checkpoints, each
evaluation's JSON, each run's result.json), and what is there is read instead of redone; an
interrupted pretraining run resumes from its newest checkpoint, an interrupted fine-tuning
restarts. Running the same command again finishes the study; `--only` runs a subset in parallel.
"""
import argparse
import csv
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sigma.engine.files import atomic_write, atomic_write_text  # noqa: E402

# study name -> (objective.name, objective.targets)
OBJECTIVES = {"pixel": ("pixel", "hard"), "l2": ("l2", "hard"), "sigma_hard": ("sigma", "hard"),
              "sigma_soft": ("sigma", "soft")}
BASELINE = "untrained"  # the encoders a run starts from (sigma.pretrain.initial): the floor of every probe
SCRATCH = "scratch"  # fine-tuning an untrained encoder: the few-label baseline
LABELS = ((0, "object"), (1, "motion"))
PROBES = [f"{p}_{n}" for p in ("knn", "linear", "attentive") for _, n in LABELS]
METRICS = [*PROBES, "segment_miou"]
FINAL_COLUMNS = ["objective", "seed", "steps", "train_seconds", "clips_per_s", "eval_seconds", "final_loss",
                 "pred_std", "pred_erank", "target_std", "target_erank", "encoder_std", "encoder_erank",
                 "usage_perplexity", *METRICS, "segment_miou_overclustering"]
CURVE_COLUMNS = ["objective", "seed", "step", "loss", "loss_v", "loss_p", "clips_per_s", "pred_std", "pred_erank",
                 "target_std", "target_erank", "usage_perplexity_v", "usage_perplexity_p", "encoder_std",
                 "encoder_erank"]
FINETUNE_COLUMNS = ["objective", "seed", "label_fraction", "num_train", "steps", "top1", "mean_class_accuracy",
                    "seconds"]
SUMMARY_COLUMNS = ["metric", "objective", "n", "mean", "std", "min", "max", "best_untrained", "margin_over_best"]
PAIRED_COLUMNS = ["metric", "a", "b", "seeds", "mean_diff", "min_diff", "max_diff", "a_wins"]

# Shapes: 112² clips of 8 frames (stride 4 over the 40-frame clips) with 2×16×16 tubes, a 4×7×7
# grid of 196 tokens; the 28-42 px objects cover two to three tokens each way. K = 64 prototypes:
# 8 clips × 176 masked tubes per step leaves ~22 tubes per prototype for the equipartition.
SHAPES = dict(data="shapes", videos=200, frames=40, size=128, object_size=(32, 48), img_size=112, num_frames=8,
              sampling_rate=4, patch_size=16, mask_ratio=0.9, batch_size=8, num_prototypes=64, out_dim=64,
              hidden_dims=None, steps=144, checkpoints=4, num_workers=1, enc_clips=16, seg_max_clips=1,
              linear_epochs=100, attentive_epochs=30, knn_k=20, seeds=[0, 1], untrained=2, fractions=[],
              ft_steps=0, pixel_baseline_clips=50)
# Digits (docs/study.md, the pre-registered protocol): the generator's defaults (1800 train / 800
# val clips of 16 frames at 64², DAVIS masks for the first 200 val clips), the tiny config at 64² with
# 8-px tubes (4×8×8 = 256 tokens, 75% masked), stride 2 (8 of the 16 frames), whole-frame crops and no
# flip (left/right is half of the motion label); the smaller MLP projection (hidden 256, 256) for l2
# and both sigma runs; fine-tuning for a fixed step budget at each label fraction.
DIGITS = dict(data="digits", train=1800, val=800, davis_clips=200, frames=16, size=64, img_size=64, num_frames=8,
              sampling_rate=2, patch_size=8, mask_ratio=0.75, batch_size=8, num_prototypes=32, out_dim=64,
              hidden_dims=[256, 256], steps=800, checkpoints=4, num_workers=1, enc_clips=16, seg_max_clips=1,
              seg_sequences=50, linear_epochs=100, attentive_epochs=10, knn_k=20, seeds=[0, 1, 2], untrained=5,
              fractions=[0.05, 1.0], ft_steps=150, ft_batch_size=8, ft_base_lr=1e-2, ft_test_clips=1,
              pixel_baseline_clips=400)
# Smoke tests: tiny clips, 2×2×2 tokens, a handful of steps: check the plumbing only (digits at 64²:
# decord cannot read the generator's smaller H.264 frames).
QUICK = {"shapes": dict(SHAPES, videos=8, frames=8, size=64, object_size=(16, 24), img_size=32, num_frames=4,
                        sampling_rate=2, patch_size=16, mask_ratio=0.5, batch_size=2, num_prototypes=4, out_dim=16,
                        steps=2, checkpoints=1, num_workers=0, enc_clips=2, linear_epochs=5, attentive_epochs=2,
                        knn_k=3, seeds=[0], untrained=1),
         "digits": dict(DIGITS, train=12, val=6, davis_clips=2, frames=8, size=64, img_size=64, num_frames=4,
                        patch_size=32, mask_ratio=0.5, batch_size=2, num_prototypes=4, out_dim=16,
                        hidden_dims=[16], steps=2, checkpoints=1, num_workers=0, enc_clips=2, linear_epochs=5,
                        attentive_epochs=2, knn_k=3, seeds=[0], untrained=1, fractions=[0.5, 1.0], ft_steps=1,
                        ft_batch_size=2, ft_test_clips=1, pixel_baseline_clips=4)}


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


def cached(path, compute, **kwargs):
    """The JSON at `path` if a finished earlier call wrote it, else compute(**kwargs) written there."""
    path = Path(path)
    if path.is_file():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    value = compute(**kwargs)
    write_json(path, value)
    return value


def make_data(work, s, seed=0):
    """The study's set in WORK/data (reused when it exists with the same settings)."""
    out = Path(work) / "data"
    if s["data"] == "digits":
        keys = ("train", "val", "davis_clips", "frames", "size")
    else:
        keys = ("videos", "frames", "size", "object_size")
    want = {k: list(s[k]) if isinstance(s[k], tuple) else s[k] for k in keys} | {"seed": seed, "kind": s["data"]}
    stamp = out / "study_settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return out
    if s["data"] == "digits":
        from sigma.data.digits import make_digits_dataset
        make_digits_dataset(out, train=s["train"], val=s["val"], seed=seed, frames=s["frames"], size=s["size"],
                            davis_clips=s["davis_clips"])
    else:
        from sigma.data import make_synthetic_dataset
        make_synthetic_dataset(out, videos=s["videos"], seed=seed, frames=s["frames"], size=s["size"],
                               object_size=tuple(s["object_size"]))
    write_json(stamp, want)
    return out


def train_clip_count(data):
    return sum(1 for line in (Path(data) / "train.txt").read_text().splitlines() if line.strip())


def pretrain_config(objective, seed, s, steps, train_clips):
    """The resolved `sigma.pretrain` config of one run: the shipped tiny config with the study's sizes."""
    from sigma.pretrain import load_config
    name, targets = OBJECTIVES[objective]
    steps_per_epoch = max(1, train_clips // s["batch_size"])
    overrides = [
        ("seed", seed), ("device", "cpu"), ("amp", "none"),
        ("data.img_size", s["img_size"]), ("data.num_frames", s["num_frames"]),
        ("data.sampling_rate", s["sampling_rate"]), ("data.patch_size", s["patch_size"]),
        ("data.tubelet_size", 2), ("data.mask_ratio", s["mask_ratio"]),
        ("data.flip", False),  # left/right is half of the motion label, as on SSv2
        ("data.num_workers", s["num_workers"]), ("data.pin_memory", False),
        ("projection.kind", "mlp"), ("projection.out_dim", s["out_dim"]),
        ("objective.name", name), ("objective.targets", targets), ("objective.num_prototypes", s["num_prototypes"]),
        # The cosine schedule spans exactly the step budget (whole epochs, stopped at max_steps).
        ("optim.batch_size", s["batch_size"]), ("optim.epochs", math.ceil(steps / steps_per_epoch)),
        ("optim.warmup_epochs", max(1, math.ceil(steps / steps_per_epoch / 10))), ("optim.max_steps", steps),
        ("log.every", max(1, steps // 30)), ("log.stats_every", max(1, steps // 30)), ("log.tensorboard", False),
        ("checkpoint.every", max(1, steps // s["checkpoints"])), ("checkpoint.keep", None),
    ]
    if s["data"] == "digits":
        overrides.append(("data.scales", [1.0]))  # the whole frame: the digit may sit anywhere
    if s["hidden_dims"]:
        overrides.append(("projection.kwargs", {"hidden_dims": list(s["hidden_dims"])}))
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


def evaluate_encoder(source, data, s, out_dir):
    """k-NN, linear and attentive probes (object and motion labels) and segment mIoU of one encoder;
    `source`: {"checkpoint": path}. Each evaluation's
    JSON under OUT_DIR is reused when it is there."""
    import sigma.evaluate as ev
    common = dict(sampling_rate=s["sampling_rate"], device="cpu", amp="none", progress=False, **source)
    # one extraction of pooled features and one of tokens serve all six probes of this encoder
    cache = Path(out_dir) / "features_cache"
    probes = dict(common, features_cache=str(cache))
    r = {}
    for column, name in LABELS:
        sub = Path(out_dir) / name
        r[f"knn_{name}"] = cached(sub / "knn.json", ev.knn,
            data=data, output_dir=sub / "knn", label_column=column, k=s["knn_k"], **probes)["top1"]
        r[f"linear_{name}"] = cached(sub / "linear.json", ev.linear,
            data=data, output_dir=sub / "linear", label_column=column, epochs=s["linear_epochs"], seed=0,
            **probes)["top1"]
        r[f"attentive_{name}"] = cached(sub / "attentive.json", ev.linear,
            data=data, output_dir=sub / "attentive", label_column=column, pooling="attentive",
            epochs=s["attentive_epochs"], seed=0, **probes)["top1"]
    shutil.rmtree(cache, ignore_errors=True)  # the tokens are large (~0.5 GB); every probe's JSON is written
    seg_split = Path(data) / "davis" / "ImageSets" / "2017" / "val.txt"
    sequences = seg_split.read_text().split()[:s["seg_sequences"]] if s.get("seg_sequences") else None
    seg = cached(Path(out_dir) / "segment.json", ev.segment,
        data=Path(data) / "davis", output_dir=Path(out_dir) / "segment", split="val", sequences=sequences,
        max_clips=s["seg_max_clips"], kmeans="sklearn",  # what the reported study ran (docs/study.md)
        **{k: v for k, v in common.items() if k != "sampling_rate"})
    r["segment_miou"] = seg["miou_clustering"]
    r["segment_miou_overclustering"] = seg["miou_overclustering"]
    return r


def finetune_rows(name, seed, source, data, s, out_dir):
    """Fine-tune one encoder on each label fraction of the object label (fixed step budget); one row each."""
    import sigma.evaluate as ev
    from sigma.data import read_video_list
    from sigma.evaluate.common import stratified_subset
    rows, train = [], read_video_list(Path(data) / "train.txt")
    for fraction in s["fractions"]:
        sub = Path(out_dir) / f"finetune-{fraction:g}"
        # the very subset the task will draw: the epochs that hold the fixed step budget
        spe = max(1, len(stratified_subset(train, 0, fraction, seed)) // s["ft_batch_size"])
        epochs = math.ceil(s["ft_steps"] / spe)
        r = cached(sub / "result.json", ev.finetune,
            data=data, output_dir=sub / "run", label_fraction=fraction, seed=seed, epochs=epochs,
            max_steps=s["ft_steps"], batch_size=s["ft_batch_size"], base_lr=s["ft_base_lr"],
            warmup_epochs=epochs / 10, mixup=0.0, cutmix=0.0, randaug=None, flip=False,
            sampling_rate=s["sampling_rate"], test_clips=s["ft_test_clips"], test_crops=1, device="cpu",
            amp="none", progress=False, overwrite=True, **source)
        rows.append({"objective": name, "seed": seed, "label_fraction": fraction, "num_train": r["num_train"],
                     "steps": r["steps"], "top1": r["top1"], "mean_class_accuracy": r["mean_class_accuracy"],
                     "seconds": round(r["seconds"], 1)})
    return rows


def pretrain(objective, seed, s, steps, data, run_dir):
    """Pretrain one run in RUN_DIR (resuming from its newest checkpoint): (steps, train seconds)."""
    from sigma.pretrain import train
    cfg = pretrain_config(objective, seed, s, steps, train_clip_count(data))
    done = run_dir / "pretrain_done.json"
    if done.is_file():
        return json.loads(done.read_text())
    resume = "auto" if any((run_dir / "checkpoints").glob("checkpoint-*.pt")) else None
    t0 = time.time()
    steps_done = train(cfg, str(Path(data) / "train.txt"), run_dir, resume=resume, overwrite=resume is None)
    info = {"steps": steps_done, "train_seconds": round(time.time() - t0, 1), "resumed": resume is not None}
    write_json(done, info)
    return info


def run_one(objective, seed, s, steps, data, work):
    """Pretrain (or, for the baseline, only initialise) one model, measure and evaluate it; WORK/<run>/result.json."""
    from sigma.engine.config import dump_config
    from sigma.models import load_encoder
    run_dir = Path(work) / f"{objective}-seed{seed}"
    result_path = run_dir / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    clips = fixed_val_clips(data, s, s["enc_clips"])
    # the untrained encoder of seed N is the one a sigma run of seed N starts from
    init_cfg = run_dir / "init_config.yaml"
    atomic_write_text(init_cfg, dump_config(pretrain_config(
        "sigma_hard" if objective == BASELINE else objective, seed, s, steps, train_clip_count(data))))
    init_dir = run_dir / "initial"
    if not (init_dir / "config.json").is_file():  # written last by save_pretrained
        from sigma.pretrain.initial import export_initial_encoder
        export_initial_encoder(str(init_cfg), seed, init_dir)
    enc_curve = [(0, *encoder_collapse(load_encoder(str(init_dir)), clips))]
    curves, final = [], {}
    if objective == BASELINE:
        source, info = {"checkpoint": str(init_dir)}, {"steps": 0, "train_seconds": 0.0}
    else:
        info = pretrain(objective, seed, s, steps, data, run_dir)
        for p in sorted((run_dir / "checkpoints").glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1])):
            enc_curve.append((int(p.stem.split("-")[1]), *encoder_collapse(load_encoder(str(p)), clips)))
        source = {"checkpoint": str(run_dir / "checkpoints" / "last.pt")}
        curves = read_csv(run_dir / "metrics.csv")
    rows = curve_rows(objective, seed, curves, enc_curve)
    last = next((r for r in reversed(curves) if r.get("pred_std") not in (None, "")), {})
    for k in ("pred_std", "pred_erank", "target_std", "target_erank"):
        final[k] = float(last[k]) if last else None
    final["final_loss"] = float(curves[-1]["loss"]) if curves else None
    speeds = sorted(float(r["clips_per_s"]) for r in curves if r.get("clips_per_s") not in (None, ""))
    final["clips_per_s"] = round(speeds[len(speeds) // 2], 2) if speeds else None  # median: robust to a busy minute
    perp = [float(last[k]) for k in ("usage_perplexity_v", "usage_perplexity_p") if last.get(k) not in (None, "")]
    final["usage_perplexity"] = sum(perp) / len(perp) if perp else None
    final["encoder_std"], final["encoder_erank"] = enc_curve[-1][1:]
    t1 = time.time()
    final.update(evaluate_encoder(source, data, s, run_dir / "eval"))
    finetune = []
    if s["fractions"] and (objective != BASELINE or seed in s["seeds"]):
        finetune = finetune_rows(SCRATCH if objective == BASELINE else objective, seed, source, data, s,
                                 run_dir / "eval")
    result = {"objective": objective, "seed": seed, "steps": info["steps"], "train_seconds": info["train_seconds"],
              "eval_seconds": round(time.time() - t1, 1), **final, "curves": rows, "finetune": finetune}
    write_json(result_path, result)
    return result


def curve_rows(objective, seed, curves, enc_curve):
    """One row per logged step, the encoder's collapse measures joined at the checkpoints' steps."""
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
    return sorted(rows, key=lambda r: r["step"])


def pixel_baseline(s, steps, data, work):
    """The pixel objective's all-zeros and best-constant losses on its own targets (sigma.pretrain.baseline)."""
    from sigma.pretrain.baseline import pixel_baselines
    cfg = pretrain_config("pixel", 0, s, steps, train_clip_count(data))
    return cached(Path(work) / "pixel_baseline.json", pixel_baselines, cfg=cfg, data=str(Path(data) / "train.txt"),
                  clips=min(s["pixel_baseline_clips"], train_clip_count(data)))


def _stats(vals):
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return n, mean, std


def summary_rows(results, finetune):
    """Mean, sample std, min and max over seeds of every metric and objective, with the margin of the
    mean over the best untrained encoder (the pre-registered 'beats untrained' test, docs/study.md)."""
    rows = []
    items = [(m, r["objective"], r[m]) for r in results for m in METRICS if r.get(m) is not None]
    items += [(f"finetune_{f['label_fraction']:g}", f["objective"], f["top1"]) for f in finetune]
    for metric in dict.fromkeys(m for m, _, _ in items):
        floor = [v for m, o, v in items if m == metric and o in (BASELINE, SCRATCH)]
        best = max(floor) if floor else None
        for obj in dict.fromkeys(o for m, o, _ in items if m == metric):
            vals = [v for m, o, v in items if m == metric and o == obj]
            n, mean, std = _stats(vals)
            rows.append({"metric": metric, "objective": obj, "n": n, "mean": round(mean, 4), "std": round(std, 4),
                         "min": round(min(vals), 4), "max": round(max(vals), 4), "best_untrained": best,
                         "margin_over_best": None if best is None else round(mean - best, 4)})
    return rows


def paired_rows(results, finetune):
    """Paired differences (same seeds) of every pair of objectives, and of each objective against the
    untrained encoder / from-scratch fine-tuning of the same seed."""
    values = {}
    for r in results:
        for m in METRICS:
            if r.get(m) is not None:
                values[(m, r["objective"], r["seed"])] = r[m]
    for f in finetune:
        values[(f"finetune_{f['label_fraction']:g}", f["objective"], f["seed"])] = f["top1"]
    metrics = dict.fromkeys(m for m, _, _ in values)
    names = [o for o in (*OBJECTIVES, BASELINE, SCRATCH) if any(k[1] == o for k in values)]
    rows = []
    for m in metrics:
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                seeds = sorted(sd for (mm, o, sd) in values if mm == m and o == a and (m, b, sd) in values)
                if not seeds:
                    continue
                d = [values[(m, a, sd)] - values[(m, b, sd)] for sd in seeds]
                rows.append({"metric": m, "a": a, "b": b, "seeds": " ".join(map(str, seeds)),
                             "mean_diff": round(sum(d) / len(d), 4), "min_diff": round(min(d), 4),
                             "max_diff": round(max(d), 4), "a_wins": sum(x > 0 for x in d)})
    return rows


COLOURS = {"pixel": "tab:blue", "l2": "tab:red", "sigma_hard": "tab:green", "sigma_soft": "tab:olive",
           BASELINE: "tab:gray", SCRATCH: "tab:gray"}


def plot(results, finetune, baseline, path, title):
    """Curves over training (one colour per objective, one line per seed; the pixel loss beside its
    all-zeros and best-constant predictors), collapse measures, and every lens with seed dots."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("loss", "loss (log)", True), ("target_erank", "projection target eff. rank", False),
              ("pred_erank", "decoder prediction eff. rank", False),
              ("encoder_erank", "encoder token eff. rank", False),
              ("target_std", "projection target std", True),
              ("usage_perplexity_v", "prototype usage perplexity", False)]
    fig = plt.figure(figsize=(20, 10))
    gs = fig.add_gridspec(2, 5)
    for i, (key, label, logy) in enumerate(panels):
        ax = fig.add_subplot(gs[i // 3, i % 3])
        for r in results:
            pts = [(c["step"], c[key]) for c in r["curves"] if c.get(key) is not None and math.isfinite(c[key])]
            if pts:
                ax.plot(*zip(*pts), color=COLOURS.get(r["objective"], "k"), alpha=0.8, marker=".", ms=3,
                        label=f"{r['objective']} s{r['seed']}")
        if key == "loss" and baseline:
            for k, ls in (("zeros", "--"), ("best_constant", ":")):
                ax.axhline(baseline[k], color="tab:blue", ls=ls, lw=1, label=f"pixel: {k} {baseline[k]:.3f}")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        if logy:
            ax.set_yscale("log")
        if i == 0:
            ax.legend(fontsize=6, ncol=2)
    names = [o for o in (*OBJECTIVES, BASELINE) if any(r["objective"] == o for r in results)]
    ax = fig.add_subplot(gs[:, 3])
    for j, o in enumerate(names):
        runs = [r for r in results if r["objective"] == o]
        for k, m in enumerate(METRICS):
            vals = [100 * r[m] if m.startswith("segment") else r[m] for r in runs if r.get(m) is not None]
            y = j + k * (len(names) + 1)
            if vals:
                ax.barh(y, sum(vals) / len(vals), height=0.9, color=COLOURS.get(o, "k"), label=o if k == 0 else None)
                ax.plot(vals, [y] * len(vals), "k.", ms=4)
    ax.set_yticks([(len(names) - 1) / 2 + k * (len(names) + 1) for k in range(len(METRICS))])
    ax.set_yticklabels([m.replace("_", " ") for m in METRICS])
    ax.invert_yaxis()
    ax.set_xlabel("% (top-1 / mIoU×100); bars = mean, dots = seeds")
    ax.legend(fontsize=8, loc="lower right")
    ax = fig.add_subplot(gs[:, 4])
    for o in dict.fromkeys(f["objective"] for f in finetune):
        rows = [f for f in finetune if f["objective"] == o]
        fr = sorted({f["label_fraction"] for f in rows})
        means = [sum(f["top1"] for f in rows if f["label_fraction"] == x) /
                 sum(1 for f in rows if f["label_fraction"] == x) for x in fr]
        ax.plot(fr, means, color=COLOURS.get(o, "k"), ls="--" if o == SCRATCH else "-", marker="o", label=o)
        ax.plot([f["label_fraction"] for f in rows], [f["top1"] for f in rows], ".", color=COLOURS.get(o, "k"), ms=4)
    if finetune:
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("label fraction of the train list")
    ax.set_title("fine-tuning, object top-1 % (dots = seeds)", fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)


def markdown_table(summary):
    """A README table: per objective and metric, mean ± std over seeds [min, max]."""
    metrics = list(dict.fromkeys(r["metric"] for r in summary))
    names = list(dict.fromkeys(r["objective"] for r in summary))
    cell = {(r["metric"], r["objective"]): r for r in summary}
    lines = ["| objective | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for o in names:
        cells = []
        for m in metrics:
            r = cell.get((m, o))
            cells.append(f"{r['mean']:.3g} ± {r['std']:.2g} (n={r['n']})" if r else "–")
        lines.append(f"| `{o}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=("shapes", "digits"), default="shapes",
                   help="digits: the study of docs/study.md; shapes: the older one")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny set and clips, a few steps, one seed")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where the CSVs and the PNG go "
                   "(default benchmarks/results)")
    p.add_argument("--work", default=None, help="data and run folders (default OUT/study_work[_digits])")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: docs/study.md)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="pretraining seeds (default: docs/study.md)")
    p.add_argument("--untrained", type=int, default=None, help="untrained encoders, seeds 0..N-1")
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    p.add_argument("--only", nargs="+", default=None, metavar="OBJECTIVE:SEED",
                   help=f"run only these runs (an objective or {BASELINE}) and do not collect")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    s = dict(QUICK[args.data] if args.quick else (DIGITS if args.data == "digits" else SHAPES))
    steps = args.steps if args.steps is not None else s["steps"]
    if steps < 1:
        raise SystemExit(f"--steps must be a positive integer, got {steps}")
    s["seeds"] = args.seeds if args.seeds is not None else s["seeds"]
    untrained = args.untrained if args.untrained is not None else s["untrained"]
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    stem = "study" + ("_digits" if args.data == "digits" else "") + ("_quick" if args.quick else "")
    work = Path(args.work) if args.work else out / f"{stem}_work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if args.only:
        todo = []
        for item in args.only:
            obj, _, seed = item.partition(":")
            if obj not in (*OBJECTIVES, BASELINE) or not seed.isdigit():
                raise SystemExit(f"--only expects OBJECTIVE:SEED with OBJECTIVE in {(*OBJECTIVES, BASELINE)}, "
                                 f"got {item!r}")
            todo.append((obj, int(seed)))
    else:
        todo = [(o, sd) for sd in s["seeds"] for o in args.objectives] + [(BASELINE, sd) for sd in range(untrained)]
    data = make_data(work, s)
    baseline = pixel_baseline(s, steps, data, work) if "pixel" in args.objectives and not args.only else None
    results = []
    for obj, seed in todo:
        print(f"[study] {obj} seed {seed}: {steps} steps", file=sys.stderr, flush=True)
        r = run_one(obj, seed, s, steps, data, work)
        print(f"[study] {obj} seed {seed}: train {r['train_seconds']} s ({r['clips_per_s']} clips/s), eval "
              f"{r['eval_seconds']} s, " + ", ".join(f"{m} {r[m]:.3g}" for m in METRICS), file=sys.stderr, flush=True)
        results.append(r)
    if args.only:
        return results
    finetune = [f for r in results for f in r.get("finetune", [])]
    summary, paired = summary_rows(results, finetune), paired_rows(results, finetune)
    write_csv(out / f"{stem}.csv", FINAL_COLUMNS, results)
    write_csv(out / f"{stem}_curves.csv", CURVE_COLUMNS, [c for r in results for c in r["curves"]])
    write_csv(out / f"{stem}_summary.csv", SUMMARY_COLUMNS, summary)
    write_csv(out / f"{stem}_paired.csv", PAIRED_COLUMNS, paired)
    if finetune:
        write_csv(out / f"{stem}_finetune.csv", FINETUNE_COLUMNS, finetune)
    if baseline:
        write_json(out / f"{stem}_pixel_baseline.json", baseline)
    size = f"{s['train']}+{s['val']} digit clips" if s["data"] == "digits" else f"{s['videos']} synthetic videos"
    plot(results, finetune, baseline, out / f"{stem}.png",
         f"tiny ViT, {s['num_frames']}x{s['img_size']}² clips, {s['patch_size']}-px tubes, {steps} steps, "
         f"batch {s['batch_size']}, {size}, seeds {s['seeds']}, {untrained} untrained")
    print(markdown_table(summary))
    print(f"[study] wrote {stem}.csv, {stem}_curves.csv, {stem}_summary.csv, {stem}_paired.csv"
          + (f", {stem}_finetune.csv" if finetune else "") + f", {stem}.png in {out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
