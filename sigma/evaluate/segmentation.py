"""Unsupervised video object segmentation scores from dense features (the paper's appendix C).

Per clip, given dense encoder features (T', h, w, C) and ground-truth object masks (T, H, W):

1. features are resized to size × size (28) with bilinear interpolation, the masks with
   nearest-neighbour interpolation;
2. k-means (k-means++, best of n_init, fixed seed; `sigma.evaluate.kmeans` by default, which is
   scikit-learn's KMeans draw for draw up to ties, or scikit-learn's KMeans with kmeans="sklearn") clusters
   the T'·size² feature vectors of the clip, once with k = the clip's class count ("clustering")
   and once with k = 6 ("overclustering"). The vectors are taken in an orthonormal basis of the
   span of the clip's tokens (`token_span`: the same distances, fewer coordinates when tokens <
   width);
3. every cluster map is repeated T/T' times in time (each token covers `tubelet` frames);
4. clusters are mapped to ground-truth classes — one-to-one by Hungarian matching
   (`scipy.optimize.linear_sum_assignment`, maximising the matched pixel count) for clustering,
   many-to-one by pixel-wise precision (each cluster goes to the class that covers most of its
   pixels) for overclustering — over all frames of the clip at once;
5. IoU of every class present in the clip's resized ground truth; mIoU = their mean. A clip with
   fewer than two such classes has nothing to segment (one cluster would score 1.0): `segment`
   skips and counts it (`NothingToScore`).

Choices the paper leaves open (each configurable, and recorded in the result):
- `background="class"` (default): background (label 0) is one class like the objects, so a clip
  with n objects has k = n + 1 clusters and n + 1 IoUs. `background="ignore"`: background pixels
  are left out of clustering and scoring; k = n, n IoUs.
- Label `ignore_index` (255, DAVIS' "void") is never clustered nor scored.
- Dataset score: `reduction="sequence"` (default) averages clips within a sequence, then
  sequences; `"clip"` averages all clips; `"pooled"` divides the summed intersections by the
  summed unions over every (clip, class) pair.
- A clip whose features are all equal gives one cluster (k-means cannot split identical points):
  every pixel lands in the class it is matched to, whose IoU is that class's area fraction a;
  all other classes score 0, so the clip's mIoU is max(a) / n_classes in both settings
  (`constant_feature_miou`).
"""
import math
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from sigma.engine.config import defaults_from

from .config import SegmentConfig

BACKGROUND_MODES = ("class", "ignore")
REDUCTIONS = ("sequence", "clip", "pooled")


KMEANS = ("torch", "sklearn")


class NothingToScore(ValueError):
    """A clip with nothing to segment: fewer than two classes to score (one class is a perfect 1.0
    whatever the features), or fewer feature points than clusters. `segment` skips and counts it."""


def kmeans_labels(points, k, *, seed=0, n_init=10, tol=1e-4, implementation="torch"):
    """k-means cluster index (int64 (P,)) of every row of points (P, C), k-means++ seeds, best of
    n_init: `sigma.evaluate.kmeans` (default; scikit-learn's algorithm and random draws, its restarts
    batched) or scikit-learn's KMeans itself (implementation="sklearn", float64)."""
    if implementation not in KMEANS:
        raise ValueError(f"k-means implementation must be one of {KMEANS}, got {implementation!r}")
    from .kmeans import check_kmeans_inputs, kmeans

    if implementation == "torch":
        return kmeans(torch.as_tensor(points), k, seed=seed, n_init=n_init, tol=tol)[0].numpy()
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    pts = np.ascontiguousarray(points.detach().cpu().double().numpy() if torch.is_tensor(points) else points,
                               dtype=np.float64)
    k = check_kmeans_inputs(torch.from_numpy(pts), k, n_init)  # the same errors as the torch k-means
    with warnings.catch_warnings():
        # identical points (constant features) give fewer distinct clusters than k: that is the
        # documented degenerate case, not an error
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        # One thread, OpenMP and BLAS alike: a clip's k-means is a few thousand points, too small
        # for threads to pay off, and their spinning against other processes made `segment` 10-17×
        # slower on a loaded 2-core machine. The labels do not depend on the thread count.
        with threadpool_limits(limits=1):
            km = KMeans(n_clusters=k, n_init=n_init, random_state=seed, tol=tol).fit(pts)
    return km.labels_.astype(np.int64)


def token_span(features):
    """features (..., C) -> their coordinates (..., r) in an orthonormal basis of their span,
    r = min(C, number of feature vectors); the features themselves when that is C.

    Why: bilinear resizing mixes the clip's T'·h·w token vectors linearly, so every point k-means
    sees lies in their span, and orthonormal coordinates keep every distance and every mean. A
    tiny model's 64 tokens of width 192 cluster in 64 dimensions, with the same result.
    """
    c = features.shape[-1]
    flat = features.reshape(-1, c)
    if flat.shape[0] >= c:
        return features
    q, _ = torch.linalg.qr(flat.double().T)  # (C, N): its columns span the tokens (any rank)
    return (flat.double() @ q).to(features.dtype).reshape(*features.shape[:-1], q.shape[1])


def confusion(pred, gt, num_clusters, classes):
    """Pixel counts conf[i, j] = |pred == i and gt == classes[j]| (int64 (num_clusters, len(classes)))."""
    pred = np.asarray(pred).ravel()
    gt = np.asarray(gt).ravel()
    col = np.full(gt.max(initial=0) + 1, -1, dtype=np.int64)
    col[np.asarray(classes)] = np.arange(len(classes))
    j = col[gt]
    keep = j >= 0
    conf = np.zeros((num_clusters, len(classes)), dtype=np.int64)
    np.add.at(conf, (pred[keep], j[keep]), 1)
    return conf


def match_hungarian(conf):
    """One-to-one cluster → class mapping maximising the matched pixel count.

    conf (k, n) from `confusion`. Returns int64 (k,): the class column of every cluster, -1 for
    clusters left unmatched (k > n); classes left unmatched (k < n) receive no pixels.
    """
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(conf, maximize=True)
    mapping = np.full(conf.shape[0], -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def match_precision(conf):
    """Many-to-one mapping: every cluster → the class holding most of its pixels (max precision;
    ties to the lowest class column). conf (k, n) -> int64 (k,)."""
    return conf.argmax(axis=1).astype(np.int64)


def class_iou(conf, mapping):
    """Intersections and unions (float64 (n,) each) of every class after mapping clusters to classes."""
    k, n = conf.shape
    merged = np.zeros((n, n), dtype=np.int64)  # merged[c, j]: pixels predicted as class c with truth j
    for i in range(k):
        if mapping[i] >= 0:
            merged[mapping[i]] += conf[i]
    inter = np.diag(merged).astype(np.float64)
    pred_area = merged.sum(axis=1)
    gt_area = conf.sum(axis=0)
    union = (pred_area + gt_area).astype(np.float64) - inter
    return inter, union


def resize_masks(masks, size):
    """(T, H, W) integer labels -> (T, size, size) int64, nearest neighbour."""
    m = torch.as_tensor(np.asarray(masks)).long()
    return F.interpolate(m[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()


def resize_features(features, size):
    """(T', h, w, C) -> (T', size, size, C) float32, bilinear (align_corners=False)."""
    f = features.float().permute(0, 3, 1, 2)
    return F.interpolate(f, size=(size, size), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


def constant_feature_miou(masks, *, size=28, background="class", ignore_index=255):
    """The score of a clip whose features are all equal (one cluster): max class fraction / n."""
    gt = resize_masks(masks, size).numpy()
    classes, counts = _present_classes(gt, background, ignore_index, with_counts=True)
    return float(counts.max() / counts.sum() / len(classes))


def _present_classes(gt, background, ignore_index, with_counts=False):
    vals, counts = np.unique(gt, return_counts=True)
    keep = vals != ignore_index
    if background == "ignore":
        keep &= vals != 0
    return (vals[keep], counts[keep]) if with_counts else vals[keep]


def check_overclustering_k(overclustering_k, t_feat, size):
    """ValueError when overclustering_k exceeds a clip's t_feat · size² feature points."""
    if overclustering_k > t_feat * size * size:
        raise ValueError(f"overclustering_k (--overclustering-k) = {overclustering_k} is more than the clip's "
                         f"{t_feat * size * size} feature points ({t_feat} time steps x --size {size}²): lower "
                         "--overclustering-k or raise --size")


def segment_clip(features, masks, *, size=28, overclustering_k=6, background="class", ignore_index=255, seed=0,
                 n_init=10, l2_normalize=False, kmeans="torch"):
    """Score one clip. features (T', h, w, C) float (dense tokens, (t, h, w) order), masks (T, H, W)
    integer labels with T a multiple of T'; `kmeans`: "torch" or "sklearn" (`kmeans_labels`). Returns a
    dict with miou_clustering, miou_overclustering, k_clustering, classes, and per-setting
    intersections/unions (for pooled reduction). Raises NothingToScore when fewer than two classes
    are present (after ignore_index and background="ignore") or fewer feature points are scored
    than clusters; ValueError when overclustering_k exceeds the T'·size² feature points."""
    if background not in BACKGROUND_MODES:
        raise ValueError(f"background must be one of {BACKGROUND_MODES}, got {background!r}")
    if features.dim() != 4:
        raise ValueError(f"features: expected (T', h, w, C), got shape {tuple(features.shape)}")
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks: expected (T, H, W) labels, got shape {masks.shape}")
    t_feat, t = features.shape[0], masks.shape[0]
    if t % t_feat:
        raise ValueError(f"{t} mask frames are not a multiple of the {t_feat} feature time steps")
    repeat = t // t_feat
    check_overclustering_k(overclustering_k, t_feat, size)
    gt = resize_masks(masks, size).numpy()  # (T, s, s)
    classes = _present_classes(gt, background, ignore_index)
    if len(classes) < 2:
        raise NothingToScore(f"fewer than 2 classes to score at --size {size}: found {[int(c) for c in classes]} "
                             f"(background={background!r}, ignore_index={ignore_index})")
    width = features.shape[-1]
    # resizing is linear and unit-normalising keeps a point in the span: the same distances
    feats = resize_features(token_span(features), size)  # (T', s, s, r)
    if l2_normalize:
        feats = F.normalize(feats, dim=-1)
    # scikit-learn's tol is relative to the mean per-feature variance: the span keeps the total
    # variance in fewer features, so the same stopping rule needs tol scaled by r / C
    tol = 1e-4 * feats.shape[-1] / width
    # pixels that are scored: a feature position is clustered once; its `repeat` frames are scored
    valid = np.isin(gt, classes)  # (T, s, s)
    # a feature position is clustered if any of its frames is scored
    pos_valid = valid.reshape(t_feat, repeat, size, size).any(axis=1)  # (T', s, s)
    points = feats.reshape(-1, feats.shape[-1])[torch.from_numpy(pos_valid.ravel())]
    if len(points) < max(len(classes), overclustering_k):
        raise NothingToScore(f"{len(points)} feature points are scored, fewer than k = "
                             f"{max(len(classes), overclustering_k)} clusters")
    out = {"classes": [int(c) for c in classes], "k_clustering": len(classes),
           "k_overclustering": int(overclustering_k)}
    for setting, k, matcher in (("clustering", len(classes), match_hungarian),
                                ("overclustering", overclustering_k, match_precision)):
        labels = np.zeros(pos_valid.size, dtype=np.int64)
        labels[pos_valid.ravel()] = kmeans_labels(points, k, seed=seed, n_init=n_init, tol=tol,
                                                  implementation=kmeans)
        pred = np.repeat(labels.reshape(t_feat, size, size), repeat, axis=0)  # (T, s, s)
        conf = confusion(pred[valid], gt[valid], k, classes)
        inter, union = class_iou(conf, matcher(conf))
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        out[f"miou_{setting}"] = float(iou.mean())
        out[f"iou_{setting}"] = [float(v) for v in iou]
        out[f"intersection_{setting}"] = float(inter.sum())
        out[f"union_{setting}"] = float(union.sum())
    return out


def reduce_scores(clips, reduction="sequence"):
    """Dataset mIoU per setting from per-clip results [(sequence_name, segment_clip dict), ...]."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    out = {}
    for setting in ("clustering", "overclustering"):
        if not clips:
            out[f"miou_{setting}"] = float("nan")
        elif reduction == "clip":
            out[f"miou_{setting}"] = float(np.mean([r[f"miou_{setting}"] for _, r in clips]))
        elif reduction == "pooled":
            inter = sum(r[f"intersection_{setting}"] for _, r in clips)
            union = sum(r[f"union_{setting}"] for _, r in clips)
            out[f"miou_{setting}"] = float(inter / union) if union else float("nan")
        else:
            per_seq = {}
            for name, r in clips:
                per_seq.setdefault(name, []).append(r[f"miou_{setting}"])
            out[f"miou_{setting}"] = float(np.mean([np.mean(v) for v in per_seq.values()]))
    return out


def per_sequence(clips):
    """{sequence: {miou_clustering, miou_overclustering, num_clips}} (means over the sequence's clips)."""
    seqs = {}
    for name, r in clips:
        seqs.setdefault(name, []).append(r)
    return {name: {"miou_clustering": float(np.mean([r["miou_clustering"] for r in rs])),
                   "miou_overclustering": float(np.mean([r["miou_overclustering"] for r in rs])),
                   "num_clips": len(rs)} for name, rs in seqs.items()}


def clip_windows(num_frames_total, clip_len, stride=1, max_clips=None):
    """Frame indices of consecutive non-overlapping clips of `clip_len` frames taken every `stride`
    frames: [[i0, ...], ...]. A sequence shorter than one clip gives one clip padded by repeating
    its last frame; an incomplete tail clip is dropped."""
    span = clip_len * stride
    n = max(1, num_frames_total // span)
    if max_clips is not None:
        n = min(n, max_clips)
    out = []
    for c in range(n):
        idx = [min(c * span + j * stride, num_frames_total - 1) for j in range(clip_len)]
        out.append(idx)
    return out


def crop_box(height, width, mode):
    """(top, left, h, w) of the region of an H×W frame that is fed to the model: the whole frame
    ("resize": squashed to a square) or the central square ("center_crop")."""
    if mode == "resize":
        return 0, 0, height, width
    if mode == "center_crop":
        s = min(height, width)
        return (height - s) // 2, (width - s) // 2, s, s
    raise ValueError(f"frame_mode must be 'resize' or 'center_crop', got {mode!r}")


def tokens_to_grid(tokens, grid):
    """(N, C) tokens in (t, h, w) row-major order -> (T', H', W', C)."""
    if tokens.shape[0] != math.prod(grid):
        raise ValueError(f"{tokens.shape[0]} tokens do not fill the grid {tuple(grid)}")
    return tokens.reshape(*grid, tokens.shape[-1])


# --- the benchmark on a DAVIS-layout folder -------------------------------------------------------

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


def davis_sequences(root, split=None, sequences=None):
    """(frames_dir, masks_dir, names) of a DAVIS-layout folder: `JPEGImages/<seq>/*.jpg` and
    `Annotations/<seq>/*.png` (also under a `480p` subfolder, as DAVIS ships). Sequences: the given
    names (a list, or one name as a string; an empty list is an error), else those of
    `ImageSets/2017/<split>.txt` when split is set, else every folder."""
    from pathlib import Path

    root = Path(root)
    frames_dir, masks_dir = root / "JPEGImages", root / "Annotations"
    if not frames_dir.is_dir() or not masks_dir.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a DAVIS-layout folder: expected JPEGImages/<sequence>/*.jpg "
                                "and Annotations/<sequence>/*.png under it")
    if (frames_dir / "480p").is_dir() and (masks_dir / "480p").is_dir():
        frames_dir, masks_dir = frames_dir / "480p", masks_dir / "480p"
    if isinstance(sequences, str):
        sequences = [sequences]  # one name, not its letters
    if sequences is not None and not list(sequences):
        # an empty list read as "every sequence" would silently score what was not asked for
        raise ValueError("sequences (--sequences): expected one or more sequence names, got an empty list; "
                         "leave it unset for every sequence")
    if sequences is not None:
        names = list(sequences)
    elif split:
        listing = root / "ImageSets" / "2017" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"split {split!r}: {str(listing)!r} does not exist")
        names = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
    else:
        names = sorted(p.name for p in frames_dir.iterdir() if p.is_dir())
    if not names:
        raise ValueError(f"no sequences found in {str(frames_dir)!r}")
    return frames_dir, masks_dir, names


def read_sequence(frames_dir, masks_dir, name):
    """uint8 frames (T, H, W, 3) and int64 masks (T, H, W) of one sequence. The mask folder must
    hold one PNG per frame with the same file stem and size (clear error otherwise, as for an
    unreadable file or frames of different sizes)."""
    fdir, mdir = frames_dir / name, masks_dir / name
    if not fdir.is_dir():
        raise FileNotFoundError(f"sequence {name!r}: frame folder {str(fdir)!r} does not exist")
    if not mdir.is_dir():
        raise FileNotFoundError(f"sequence {name!r}: mask folder {str(mdir)!r} does not exist")
    frames = sorted(p for p in fdir.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
    masks = {p.stem: p for p in mdir.iterdir() if p.suffix.lower() == ".png"}
    stems = [p.stem for p in frames]
    missing = [s for s in stems if s not in masks]
    extra = sorted(set(masks) - set(stems))
    if not frames or missing or extra:
        raise ValueError(f"sequence {name!r}: mask folder {str(mdir)!r} does not match the frames in {str(fdir)!r} "
                         f"({len(frames)} frames; masks missing for {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                         f"masks without a frame: {extra[:5]}{'...' if len(extra) > 5 else ''})")
    imgs, labels = [], []
    for p in frames:
        imgs.append(_read_image(p, name, "frame", lambda im: np.asarray(im.convert("RGB"))))
        if imgs[-1].shape != imgs[0].shape:
            raise ValueError(f"sequence {name!r}: frame {str(p)!r} is {imgs[-1].shape[1]}x{imgs[-1].shape[0]} "
                             f"pixels but {frames[0].name} is {imgs[0].shape[1]}x{imgs[0].shape[0]}: every frame "
                             "of a sequence must have the same size")
    for s in stems:
        labels.append(_read_image(masks[s], name, "mask", lambda im, path=masks[s]: _mask_labels(im, name, path)))
        if labels[-1].shape != imgs[0].shape[:2]:
            raise ValueError(f"sequence {name!r}: mask {str(masks[s])!r} is {labels[-1].shape[1]}x"
                             f"{labels[-1].shape[0]} pixels but the frames are {imgs[0].shape[1]}x{imgs[0].shape[0]}")
    return np.stack(imgs), np.stack(labels)


def _read_image(path, name, what, convert):
    """convert(PIL image) of the file at path, decoded in full here: a truncated or unreadable file
    is a ValueError naming the sequence and the file, not PIL's bare OSError."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return convert(im)
    except (OSError, SyntaxError) as exc:  # UnidentifiedImageError is an OSError; PIL raises SyntaxError too
        raise ValueError(f"sequence {name!r}: cannot read {what} {str(path)!r} ({type(exc).__name__}: "
                         f"{exc}); replace or remove the file") from exc


def _mask_labels(im, name, path):
    # palette PNGs hold class indices; an RGB mask would have to be mapped to indices first
    if im.mode not in ("P", "L", "I", "I;16"):
        raise ValueError(f"sequence {name!r}: mask {path.name} has mode {im.mode}, expected an indexed "
                         "(palette or greyscale) PNG with 0 = background, 1..n = objects")
    return np.asarray(im, dtype=np.int64)


def prepare_clip(frames, masks, img_size, frame_mode, mean, std):
    """Crop (frame_mode), resize to img_size (bilinear, antialiased) and normalise frames uint8
    (T, H, W, 3) -> float32 (1, 3, T, h, w); masks cropped the same way (resized later)."""
    h, w = frames.shape[1:3]
    top, left, ch, cw = crop_box(h, w, frame_mode)
    x = torch.from_numpy(np.ascontiguousarray(frames[:, top:top + ch, left:left + cw])).permute(0, 3, 1, 2).float()
    x = F.interpolate(x / 255.0, size=tuple(img_size), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x.permute(1, 0, 2, 3)[None].contiguous(), masks[:, top:top + ch, left:left + cw]


def _check_choices(reduction, background, kmeans, frame_mode):
    """ValueError for a setting outside its choices, before any work."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if background not in BACKGROUND_MODES:
        raise ValueError(f"background must be one of {BACKGROUND_MODES}, got {background!r}")
    if kmeans not in KMEANS:
        raise ValueError(f"kmeans must be one of {KMEANS}, got {kmeans!r}")
    crop_box(2, 2, frame_mode)  # validates frame_mode


def _report_skipped(clips, skipped):
    """'nothing to score' when no clip was scored; else one stderr line when some were skipped."""
    if not clips:
        first = skipped[0]
        raise ValueError(f"nothing to score: none of the {len(skipped)} clips has 2 or more classes and enough "
                         f"feature points (e.g. {first['sequence']!r} frames {first['frames'][0]}-"
                         f"{first['frames'][1]}: {first['reason']})")
    if skipped:
        print(f"[sigma.evaluate segment] skipped {len(skipped)} of {len(skipped) + len(clips)} clips with nothing "
              "to segment (fewer than 2 classes, or fewer feature points than k); segment.json lists them under "
              "skipped_clips", file=sys.stderr, flush=True)


@torch.no_grad()
@defaults_from(SegmentConfig)
def segment(checkpoint, data, output_dir, *, split, sequences, frame_stride, max_clips,
            frame_mode, size, overclustering_k, background, reduction, ignore_index, seed, n_init, kmeans,
            l2_normalize, device, amp, progress):
    """Unsupervised video object segmentation (appendix C) of a DAVIS-layout folder `data`.

    Every sequence is cut into consecutive non-overlapping clips of the encoder's frame count
    (`clip_windows`, frames `frame_stride` apart; a short sequence is padded with its last frame);
    each clip's frames are cropped by `frame_mode` ("resize": whole frame squashed to the model's
    size; "center_crop": central square), resized, normalised, and fed to the encoder; its dense
    tokens (T', H', W', C) are scored by `segment_clip` (see the module docstring for the steps and
    the open choices). Returns (and writes to OUTPUT_DIR/segment.json) miou_clustering and
    miou_overclustering (fractions in [0, 1]) under `reduction`, per-sequence values, the clips
    skipped with nothing to segment (`num_skipped_clips`, `skipped_clips`), and settings.
    """
    import time
    from pathlib import Path

    from sigma.data import IMAGENET_MEAN, IMAGENET_STD
    from sigma.engine import amp as amp_policy
    from sigma.engine.distributed import pick_device
    from sigma.engine.provenance import provenance

    from .common import encoder_input_size, load_encoder, require_finite_weights, write_json

    _check_choices(reduction, background, kmeans, frame_mode)
    t0 = time.time()
    frames_dir, masks_dir, names = davis_sequences(data, split, sequences)
    dev = pick_device(device)
    encoder = load_encoder(checkpoint).to(dev)
    require_finite_weights(encoder, checkpoint, "segmentation (k-means on the token features)")
    num_frames, img_size, _ = encoder_input_size(encoder)
    check_overclustering_k(overclustering_k, encoder.grid_size[0], size)  # before any clip: each would fail
    amp_dtype = amp_policy.amp_dtype(amp, dev)
    clips, skipped = [], []
    it = names
    if progress:
        from tqdm import tqdm
        it = tqdm(names, desc="segment", dynamic_ncols=True)
    for name in it:
        frames, masks = read_sequence(frames_dir, masks_dir, name)
        for idx in clip_windows(len(frames), num_frames, frame_stride, max_clips):
            video, gt = prepare_clip(frames[idx], masks[idx], img_size, frame_mode, IMAGENET_MEAN, IMAGENET_STD)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                tokens = encoder.forward_features(video.to(dev))[0].float().cpu()
            try:
                r = segment_clip(tokens_to_grid(tokens, encoder.grid_size), gt, size=size,
                                 overclustering_k=overclustering_k, background=background, ignore_index=ignore_index,
                                 seed=seed, n_init=n_init, l2_normalize=l2_normalize, kmeans=kmeans)
            except NothingToScore as exc:
                skipped.append({"sequence": name, "frames": [idx[0], idx[-1]], "reason": str(exc)})
                continue
            clips.append((name, r))
    _report_skipped(clips, skipped)
    result = {"task": "segment", **reduce_scores(clips, reduction), "per_sequence": per_sequence(clips),
              "num_sequences": len({n for n, _ in clips}), "num_clips": len(clips),
              "num_skipped_clips": len(skipped), "skipped_clips": skipped,
              "settings": {"checkpoint": str(checkpoint), "data": str(data), "split": split,
                           "num_frames": num_frames, "img_size": list(img_size), "frame_stride": frame_stride,
                           "max_clips": max_clips, "frame_mode": frame_mode, "size": size,
                           "k_clustering": "object count of the clip (+1 with background='class')",
                           "k_overclustering": overclustering_k, "background": background,
                           "reduction": reduction, "ignore_index": ignore_index, "kmeans_seed": seed,
                           "kmeans_n_init": n_init, "kmeans": kmeans, "l2_normalize": l2_normalize,
                           "matching": {"clustering": "Hungarian, maximising matched pixels, over all frames",
                                        "overclustering": "each cluster to the class of max pixel-wise precision"},
                           "units": "fraction in [0, 1]"},
              "seconds": time.time() - t0, "provenance": provenance()}
    if output_dir is not None:
        write_json(Path(output_dir) / "segment.json", result)
    return result
