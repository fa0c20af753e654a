"""Pictures: k-means cluster maps of the encoder's tokens, Sinkhorn prototype assignments of every
tube, overlaid on the frames (PNG grid + GIF), and training curves from a pretraining metrics.csv.

Sizes (what a test or a script can rely on), with the model's input H×W and T' = T / tubelet:
- `<video>_clusters.png`: a labelled figure FIGURE_W pixels wide: R rows × T' columns of panels,
  each the first frame of a tube (row "frames"), its k-means cluster map overlaid (row "k-means
  k=…"), and, when the checkpoint holds a projection and prototypes, its Sinkhorn prototype
  assignment (row "Sinkhorn prototypes"); columns are labelled with the clip frames they cover, and
  every map row has a colour legend. Token maps are upscaled nearest-neighbour (one flat square per
  token).
- `<video>_clusters.gif`: T frames, the R rows side by side under a title strip, each panel upscaled
  by an integer factor (nearest) so that the picture is at least GIF_MIN_W × GIF_MIN_H pixels.
- `training_curves.png`: one panel per numeric column of metrics.csv that changes (3 per row),
  400×300 px each; constant columns are named in the title instead.
"""
import csv
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sigma.engine.config import defaults_from
from sigma.engine.distributed import pick_device
from sigma.engine.files import PRETRAIN_FORMAT, atomic_write
from sigma.engine.provenance import provenance

from .common import encoder_input_size, load_encoder, require_finite_weights, write_json
from .config import VisualizeConfig
from .segmentation import kmeans_labels

PANEL_W, PANEL_H = 400, 300  # training-curve panel size in pixels (dpi 100)
FIGURE_W = 1280               # cluster figure width in pixels (dpi 100): legible in a paper column
GIF_MIN_W, GIF_MIN_H = 768, 256
LEGEND_MAX = 10               # legend entries per map row (the most frequent labels)


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


def labels_by_frequency(labels):
    """The distinct values of `labels` (int array), most frequent first, with their counts."""
    vals, counts = np.unique(np.asarray(labels), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return vals[order], counts[order]


def overlay(frames, labels, alpha=0.5):
    """frames uint8 (T, H, W, 3), labels int (T', h, w) on the token grid -> uint8 (T, H, W, 3) with
    every token's colour blended in (labels upsampled nearest in space, repeated in time). Colour i of
    `palette` goes to the i-th most frequent label (`labels_by_frequency`)."""
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
    """One centred clip of a video file: (normalised float (C, T, H, W), uint8 frames (T, H, W, 3));
    NoReadableVideoError naming `path` when it cannot be decoded."""
    from sigma.data import NoReadableVideoError, VideoDataset, denormalize

    ds = VideoDataset([str(path)], num_frames=num_frames, sampling_rate=sampling_rate, size=size, train=False,
                      mask_ratio=None, unreadable="skip")
    sample = ds[0]
    if sample is None:  # the dataset's own error would name "<records>", not the file
        raise NoReadableVideoError(f"video {str(path)!r} could not be decoded with reader {ds.reader!r}")
    video = sample["video"]
    frames = (denormalize(video).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    return video, frames


def _save_figure(rows, titles, legends, tubelet, path):
    """The labelled figure: rows of uint8 (T, H, W, 3) pictures (first frame of every tube shown),
    `titles` (one per row), `legends` (per row: None or a list of (label text, RGB uint8)). Returns
    the PNG's (height, width)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t, h, w = rows[0].shape[:3]
    cols = t // tubelet
    dpi, legend_in, title_in = 100, 2.2, 0.45
    panel_in = (FIGURE_W / dpi - legend_in - 0.6) / cols
    height_in = title_in + len(rows) * panel_in * h / w + 0.25
    fig = plt.figure(figsize=(FIGURE_W / dpi, height_in), dpi=dpi)
    grid = fig.add_gridspec(len(rows), cols, left=0.6 / (FIGURE_W / dpi), right=1 - legend_in / (FIGURE_W / dpi),
                            top=1 - title_in / height_in, bottom=0.1 / height_in, wspace=0.03, hspace=0.06)
    for r, (pictures, title, legend) in enumerate(zip(rows, titles, legends)):
        for c in range(cols):
            ax = fig.add_subplot(grid[r, c])
            # nearest: each token stays a flat square instead of being smeared into its neighbours
            ax.imshow(pictures[c * tubelet], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frames {c * tubelet}–{(c + 1) * tubelet - 1}", fontsize=10)
            if c == 0:
                ax.set_ylabel(title, fontsize=11)
            if c == cols - 1 and legend:
                ax.legend(handles=[Patch(color=np.asarray(rgb) / 255, label=text) for text, rgb in legend],
                          loc="center left", bbox_to_anchor=(1.04, 0.5), fontsize=8, frameon=False,
                          handlelength=1.2, borderaxespad=0)
    _write_png(fig, path, dpi)  # no bbox_inches="tight": the width stays FIGURE_W
    from PIL import Image
    with Image.open(path) as im:
        return im.size[1], im.size[0]


def _legend(labels, name, counts_total):
    """Legend entries for a label map: the LEGEND_MAX most frequent labels with their share of tokens."""
    vals, counts = labels_by_frequency(labels)
    colors = palette(len(vals))
    entries = [(f"{name} {v} ({100 * n / counts_total:.0f}%)", colors[i])
               for i, (v, n) in enumerate(zip(vals[:LEGEND_MAX], counts[:LEGEND_MAX]))]
    if len(vals) > LEGEND_MAX:
        entries.append((f"+ {len(vals) - LEGEND_MAX} more", np.array([255, 255, 255], dtype=np.uint8)))
    return entries


def _write_png(fig, path, dpi):
    """Save a matplotlib figure as PNG atomically (a killed run leaves the old picture or the new
    one, never half of one), then close it. format= because the temporary name has no .png."""
    import matplotlib.pyplot as plt
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)


def _save_gif(rows, titles, path, fps=8):
    """Rows side by side, each panel upscaled nearest by one integer factor so that the GIF is at
    least GIF_MIN_W × GIF_MIN_H, under a strip with the row titles. Returns (frames, height, width)."""
    from PIL import Image, ImageDraw, ImageFont

    t, h, w = rows[0].shape[:3]
    strip = 28
    scale = max(1, math.ceil((GIF_MIN_H - strip) / h), math.ceil(GIF_MIN_W / (len(rows) * w)))
    font = ImageFont.load_default(size=16)
    frames = []
    for i in range(t):
        body = np.concatenate([r[i] for r in rows], axis=1).repeat(scale, axis=0).repeat(scale, axis=1)
        canvas = Image.new("RGB", (body.shape[1], body.shape[0] + strip), "white")
        canvas.paste(Image.fromarray(body), (0, strip))
        draw = ImageDraw.Draw(canvas)
        for j, title in enumerate(titles):
            draw.text((j * w * scale + 6, 5), f"{title} (t = {i})" if j == 0 else title, fill="black", font=font)
        frames.append(canvas)
    atomic_write(path, lambda tmp: frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                                                   duration=int(1000 / fps), loop=0))
    return (len(frames), frames[0].size[1], frames[0].size[0])


@torch.no_grad()
def visualize_clip(encoder, video_path, out_dir, *, k=6, seed=0, alpha=0.5, sampling_rate=4, prototype_parts=None,
                   device="cpu", name=None):
    """Cluster-map pictures of one video, OUT_DIR/<name>_clusters.{png,gif} (`name`: default the
    file's stem); returns a dict of the written files and their sizes."""
    num_frames, size, tube = encoder_input_size(encoder)
    video, frames = read_clip(video_path, num_frames, size, sampling_rate)
    x = video[None].to(device)
    tokens = encoder.forward_features(x)[0].float().cpu()
    grid = tuple(encoder.grid_size)
    clusters = token_clusters(tokens, grid, k, seed)
    rows, titles = [frames, overlay(frames, clusters, alpha)], ["frames", f"k-means k={k}"]
    legends = [None, _legend(clusters, "cluster", clusters.size)]
    if prototype_parts is not None:
        proj, protos, eps, iters = prototype_parts
        assigned = prototype_assignments(x, proj, protos, grid, eps, iters)
        rows.append(overlay(frames, assigned, alpha))
        titles.append(f"Sinkhorn prototypes (K={protos.shape[0]})")
        legends.append(_legend(assigned, "prototype", assigned.size))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(video_path).stem if name is None else name
    png, gif = out_dir / f"{stem}_clusters.png", out_dir / f"{stem}_clusters.gif"
    png_hw = _save_figure(rows, titles, legends, tube[0], png)
    gif_shape = _save_gif(rows, titles, gif)
    return {"video": str(video_path), "png": str(png), "png_size_hw": list(png_hw), "gif": str(gif),
            "gif_frames": gif_shape[0], "gif_size_hw": list(gif_shape[1:3]), "rows": titles}


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
    each PANEL_W × PANEL_H px); columns never recorded (e.g. loss_scale without fp16) get no panel,
    nor do constant ones (e.g. videos_skipped all 0), which the figure's title names with their value.
    Returns (path, (height, width))."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = read_metrics_csv(metrics_csv)
    x = cols.pop("step", None)
    cols.pop("epoch", None)
    if x is None:
        x = np.arange(len(next(iter(cols.values()))))
    recorded = [c for c in cols if np.isfinite(cols[c]).any()]
    constant = {c: np.nanmin(cols[c]) for c in recorded if np.nanmin(cols[c]) == np.nanmax(cols[c])}
    names = sorted((c for c in recorded if c not in constant or len(constant) == len(recorded)),
                   key=lambda c: (not c.startswith("loss"), c))
    if not names:
        raise ValueError(f"metrics file {str(metrics_csv)!r} has no numeric column to plot besides step")
    constant = {c: v for c, v in constant.items() if c not in names}
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
    if constant:
        fig.suptitle("constant, not plotted: " + ", ".join(f"{c} = {v:g}" for c, v in sorted(constant.items())),
                     fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 24 / (nrows * PANEL_H)) if constant else None)  # room for the title
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    _write_png(fig, out_png, 100)  # no bbox_inches="tight": the size stays ncols·PANEL_W × nrows·PANEL_H
    return out_png, (nrows * PANEL_H, ncols * PANEL_W)


def picture_names(videos):
    """One distinct picture name per video: its file stem; where stems collide (a/x.mp4, b/x.mp4),
    prefixed with the folder's name (a_x, b_x); where even those collide, numbered (x_2, ...), so no
    video's pictures overwrite another's."""
    stems = [Path(v).stem for v in videos]
    shared = Counter(stems)
    used, names = set(), []
    for v, stem in zip(videos, stems):
        name = base = f"{Path(v).parent.name}_{stem}" if shared[stem] > 1 else stem
        n = 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        names.append(name)
    return names


def _videos_of(data, max_videos):
    from sigma.data import read_video_list

    p = Path(data)
    if p.is_file() and p.suffix.lower() not in (".txt", ".csv", ".lst"):
        return [p]
    return [Path(r.path) for r in read_video_list(p)[:max_videos]]


def _visualize_videos(encoder, data, max_videos, out_dir, progress, **kwargs):
    """(clips, skipped) of `visualize_clip` over the videos of `data`: an unreadable one is skipped,
    reported on stderr and listed as {"video", "error"}, so one bad file does not cost the others'
    pictures; NoReadableVideoError naming `data` when none is readable."""
    from tqdm.auto import tqdm

    from sigma.data import NoReadableVideoError
    videos = _videos_of(data, max_videos)
    clips, skipped = [], []
    for v, name in tqdm(list(zip(videos, picture_names(videos))), desc="visualize", disable=not progress,
                        file=sys.stderr):
        try:
            clips.append(visualize_clip(encoder, v, out_dir, name=name, **kwargs))
        except NoReadableVideoError as exc:
            print(f"visualize: skipping unreadable video: {exc}", file=sys.stderr)
            skipped.append({"video": str(v), "error": str(exc)})
    if not clips:
        raise NoReadableVideoError(f"no readable video in {str(data)!r}: {len(skipped)} of {len(videos)} file(s) "
                                   f"could not be decoded (first: {skipped[0]['error']})")
    return clips, skipped


@defaults_from(VisualizeConfig)
def visualize(checkpoint, data, output_dir, *, metrics, k, seed, alpha, sampling_rate, max_videos, device,
              progress):
    """Cluster maps (and prototype assignments) of the video file `data` (or the first `max_videos`
    of a list/folder), plus training curves of `metrics` (default: metrics.csv of the pretraining run
    the checkpoint belongs to, when there is one). Writes OUTPUT_DIR/visualize/* and
    OUTPUT_DIR/visualize.json; returns the same dict."""
    t0 = time.time()
    out = Path(output_dir)
    dev = pick_device(device)
    encoder = load_encoder(checkpoint).to(dev)
    require_finite_weights(encoder, checkpoint, "the cluster pictures (k-means on the token features)")
    parts, reason = _load_prototype_parts(checkpoint, dev)
    clips, skipped = _visualize_videos(encoder, data, max_videos, out / "visualize", progress, k=k, seed=seed,
                                       alpha=alpha, sampling_rate=sampling_rate, prototype_parts=parts, device=dev)
    result = {"task": "visualize", "clips": clips, "skipped": skipped, "prototypes": reason or "shown (row 3)",
              "k": k, "seed": seed, "checkpoint": str(checkpoint)}
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
