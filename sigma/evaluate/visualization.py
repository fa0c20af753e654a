"""Pictures: k-means cluster maps of the encoder's tokens, Sinkhorn prototype assignments of every
tube, overlaid on the frames (PNG grid + GIF), and training curves from a pretraining metrics.csv.

Sizes (what a test or a script can rely on), with the model's input H×W and T' = T / tubelet:
- `<video>_clusters.png`: a grid of R rows × T' columns of H×W panels, i.e. (R·H) × (T'·W) pixels
  (height × width): row 1 the frames (the first frame of every tube), row 2 the k-means cluster map
  overlaid, row 3 (when the checkpoint holds a projection and prototypes) the prototype assignment.
- `<video>_clusters.gif`: T frames of H × (R·W) pixels, the same rows side by side.
- `training_curves.png`: one panel per numeric column of metrics.csv (3 per row), 400×300 px each.
"""
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sigma.engine.config import defaults_from
from sigma.engine.distributed import pick_device
from sigma.engine.files import PRETRAIN_FORMAT
from sigma.engine.provenance import provenance

from .common import encoder_input_size, load_encoder, write_json
from .config import VisualizeConfig
from .segmentation import kmeans_labels

PANEL_W, PANEL_H = 400, 300  # training-curve panel size in pixels (dpi 100)


def palette(n):
    """n distinct RGB colours (uint8 (n, 3)): tab20, then hues of a golden-ratio walk."""
    import matplotlib

    base = (np.asarray(matplotlib.colormaps["tab20"].colors)[::2].tolist()
            + np.asarray(matplotlib.colormaps["tab20"].colors)[1::2].tolist())
    cols = [tuple(c) for c in base]
    i = 0
    while len(cols) < n:
        import colorsys
        cols.append(colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95))
        i += 1
    return (np.asarray(cols[:n]) * 255).round().astype(np.uint8)


def relabel_by_frequency(labels):
    """Renumber labels so 0 is the most frequent (stable colours across pictures): int64 same shape."""
    vals, counts = np.unique(labels, return_counts=True)
    order = vals[np.argsort(-counts, kind="stable")]
    lut = np.zeros(labels.max() + 1, dtype=np.int64)
    lut[order] = np.arange(len(order))
    return lut[labels]


def overlay(frames, labels, alpha=0.5):
    """frames uint8 (T, H, W, 3), labels int (T', h, w) on the token grid -> uint8 (T, H, W, 3) with
    every token's colour blended in (labels upsampled nearest in space, repeated in time)."""
    t, h, w = frames.shape[:3]
    lab = relabel_by_frequency(np.asarray(labels))
    colors = palette(int(lab.max()) + 1)
    up = F.interpolate(torch.from_numpy(lab)[:, None].float(), size=(h, w), mode="nearest")[:, 0].long().numpy()
    up = np.repeat(up, t // lab.shape[0], axis=0)
    return ((1 - alpha) * frames + alpha * colors[up]).round().clip(0, 255).astype(np.uint8)


def token_clusters(tokens, grid, k=6, seed=0):
    """k-means labels (T', H', W') of dense tokens (N, C) in (t, h, w) order."""
    return kmeans_labels(tokens, k, seed=seed, n_init=4).reshape(grid)


def prototype_assignments(video, projection, prototypes, grid, epsilon=0.05, n_iters=3):
    """Sinkhorn hard assignment (T', H', W') of every tube's projection feature to the prototypes:
    scores = normalize(z)·normalize(C)ᵀ over all N tubes of the clip, then `sinkhorn_assign`."""
    from sigma_kernels import normalize_rows, sinkhorn_assign

    n = math.prod(grid)
    mask = torch.ones(1, n, dtype=torch.bool, device=video.device)
    z = projection(video, mask)[0].float()  # (N, D)
    c = F.normalize(prototypes.float().to(z.device), dim=1)
    scores = normalize_rows(z) @ c.T
    return sinkhorn_assign(scores, epsilon, n_iters).cpu().numpy().reshape(grid)


def _load_prototype_parts(checkpoint, device):
    """(projection, prototypes (K, D), epsilon, n_iters) from a pretraining checkpoint, or
    (None, reason) when the file holds no projection/prototypes (e.g. an exported encoder)."""
    from sigma.models import create_projection, safe_torch_load

    path = Path(checkpoint)
    if path.is_dir():  # a run directory (checkpoints/last.pt) or an exported model folder
        path = next((p for p in (path / "checkpoints" / "last.pt", path / "last.pt") if p.is_file()), path)
    if path.is_dir() or path.suffix == ".safetensors":
        return None, "an exported model (safetensors) holds no projection network or prototypes"
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("format") != PRETRAIN_FORMAT:
        return None, "not a pretraining checkpoint: no projection network or prototypes"
    loss = state.get("loss") or {}
    protos = [v for v in loss.values() if torch.is_tensor(v) and v.dim() == 2]
    if not protos:
        return None, "the checkpoint's objective has no prototypes (pixel or l2 baseline)"
    try:
        proj = create_projection(**state["projection_config"])
        proj.load_state_dict(state["projection"], strict=False)
    except Exception as exc:  # noqa: BLE001 - e.g. a DINO projection whose weights file is not here
        return None, f"projection network could not be rebuilt: {type(exc).__name__}: {exc}"
    cfg = state.get("loss_config") or {}
    return (proj.to(device).eval(), protos[0], float(cfg.get("epsilon", 0.05)),
            int(cfg.get("sinkhorn_iterations", 10))), None


def read_clip(path, num_frames, size, sampling_rate=4):
    """One centred clip of a video file: (normalised float (C, T, H, W), uint8 frames (T, H, W, 3))."""
    from sigma.data import VideoDataset, denormalize

    ds = VideoDataset([str(path)], num_frames=num_frames, sampling_rate=sampling_rate, size=size, train=False,
                      mask_ratio=None)
    video = ds[0]["video"]
    if ds.num_skipped:
        raise ValueError(f"video {str(path)!r} could not be decoded")
    frames = (denormalize(video).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    return video, frames


def _save_grid(rows, tubelet, path):
    """rows: list of uint8 (T, H, W, 3) -> PNG of the first frame of every tube, rows stacked."""
    from PIL import Image

    grid = np.concatenate([np.concatenate(list(r[::tubelet]), axis=1) for r in rows], axis=0)
    Image.fromarray(grid).save(path)
    return grid.shape


def _save_gif(rows, path, fps=8):
    from PIL import Image

    frames = [Image.fromarray(np.concatenate([r[t] for r in rows], axis=1)) for t in range(rows[0].shape[0])]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return (len(frames), *np.asarray(frames[0]).shape)


@torch.no_grad()
def visualize_clip(encoder, video_path, out_dir, *, k=6, seed=0, alpha=0.5, sampling_rate=4, prototype_parts=None,
                   device="cpu"):
    """Cluster-map pictures of one video; returns a dict of the written files and their sizes."""
    num_frames, size, tube = encoder_input_size(encoder)
    video, frames = read_clip(video_path, num_frames, size, sampling_rate)
    x = video[None].to(device)
    tokens = encoder.forward_features(x)[0].float().cpu()
    grid = tuple(encoder.grid_size)
    rows = [frames, overlay(frames, token_clusters(tokens, grid, k, seed), alpha)]
    if prototype_parts is not None:
        proj, protos, eps, iters = prototype_parts
        rows.append(overlay(frames, prototype_assignments(x, proj, protos, grid, eps, iters), alpha))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(video_path).stem
    png, gif = out_dir / f"{stem}_clusters.png", out_dir / f"{stem}_clusters.gif"
    png_shape = _save_grid(rows, tube[0], png)
    gif_shape = _save_gif(rows, gif)
    return {"video": str(video_path), "png": str(png), "png_size_hw": list(png_shape[:2]), "gif": str(gif),
            "gif_frames": gif_shape[0], "gif_size_hw": list(gif_shape[1:3]),
            "rows": ["frames", f"k-means (k={k})"] + (["prototypes (Sinkhorn)"] if len(rows) == 3 else [])}


def read_metrics_csv(path):
    """{column: float array} of the numeric columns of a metrics CSV (blank cells are NaN)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"metrics file {str(path)!r} has no rows")
    cols = {}
    for name in rows[0]:
        vals = []
        for r in rows:
            try:
                vals.append(float(r[name]) if r[name] not in ("", None) else math.nan)
            except ValueError:
                break
        else:
            cols[name] = np.asarray(vals)
    return cols


def plot_training_curves(metrics_csv, out_png):
    """One panel per numeric column of a pretraining metrics.csv against `step` (3 panels per row,
    each PANEL_W × PANEL_H px); columns never recorded (e.g. loss_scale without fp16) get no panel.
    Returns (path, (height, width))."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = read_metrics_csv(metrics_csv)
    x = cols.pop("step", None)
    cols.pop("epoch", None)
    if x is None:
        x = np.arange(len(next(iter(cols.values()))))
    names = sorted((c for c in cols if np.isfinite(cols[c]).any()), key=lambda c: (not c.startswith("loss"), c))
    if not names:
        raise ValueError(f"metrics file {str(metrics_csv)!r} has no numeric column to plot besides step")
    ncols = 3
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * PANEL_W / 100, nrows * PANEL_H / 100), dpi=100,
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        ok = np.isfinite(cols[name])
        ax.plot(x[ok], cols[name][ok], lw=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)  # no bbox_inches="tight": the size stays ncols·PANEL_W × nrows·PANEL_H
    plt.close(fig)
    return out_png, (nrows * PANEL_H, ncols * PANEL_W)


def _videos_of(data, max_videos):
    from sigma.data import read_video_list

    p = Path(data)
    if p.is_file() and p.suffix.lower() not in (".txt", ".csv", ".lst"):
        return [p]
    return [Path(r.path) for r in read_video_list(p)[:max_videos]]


@defaults_from(VisualizeConfig)
def visualize(checkpoint, data, output_dir, *, metrics, k, seed, alpha, sampling_rate, max_videos, device):
    """Cluster maps (and prototype assignments) of the video file `data` (or the first `max_videos`
    of a list/folder), plus training curves of `metrics` (default: metrics.csv of the pretraining run
    the checkpoint belongs to, when there is one). Writes OUTPUT_DIR/visualize/* and
    OUTPUT_DIR/visualize.json; returns the same dict."""
    t0 = time.time()
    out = Path(output_dir)
    dev = pick_device(device)
    encoder = load_encoder(checkpoint).to(dev)
    parts, reason = _load_prototype_parts(checkpoint, dev)
    clips = [visualize_clip(encoder, v, out / "visualize", k=k, seed=seed, alpha=alpha, sampling_rate=sampling_rate,
                            prototype_parts=parts, device=dev) for v in _videos_of(data, max_videos)]
    result = {"task": "visualize", "clips": clips, "prototypes": reason or "shown (row 3)", "k": k, "seed": seed,
              "checkpoint": str(checkpoint)}
    if metrics is None:
        ck = Path(checkpoint).resolve()
        guesses = [ck / "metrics.csv", ck.parent.parent / "metrics.csv"]  # run dir, or run/checkpoints/x.pt
        metrics = next((g for g in guesses if g.is_file()), None)
    if metrics is not None:
        png, hw = plot_training_curves(metrics, out / "visualize" / "training_curves.png")
        result["training_curves"] = {"png": str(png), "size_hw": list(hw), "metrics": str(metrics)}
    result.update(seconds=time.time() - t0, provenance=provenance())
    write_json(out / "visualize.json", result)
    return result
