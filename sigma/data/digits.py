"""Moving Digits: scikit-learn's handwritten digits moving over slowly panning photographs.

    python -m sigma.data.synthetic OUT --kind digits [--train N] [--val N] [--size S] [--frames F] [--seed S]

Each clip shows one labelled digit (one of the 1797 8×8 images of `sklearn.datasets.load_digits`,
upsampled to 24-32 px) moving in a straight line at constant velocity in one of four directions
(no bounce: the motion label holds in every frame), over a crop of one of the two photographs
scikit-learn ships (`load_sample_images`) that pans slowly, zoomed and recoloured per clip, so no
two tubes of the set are alike. Half the clips have a second, smaller, unlabelled digit of another
class moving in any direction; half of those pass in front of the labelled one. Train and val
clips draw their digits from disjoint halves of the images (stratified by class). Written:

    OUT/videos/{train,val}NNNNN.mp4            H.264 (libx264, yuv420p) through PyAV
    OUT/train.txt, OUT/val.txt                 lines `videos/<name>.mp4 <digit> <motion>`
    OUT/classes.json                           {"digit": ["0", ..., "9"], "motion": [...]}
    OUT/info.json                              the generator's settings and pool sizes
    OUT/davis/JPEGImages/<name>/%05d.jpg       val clips' frames, before video compression
    OUT/davis/Annotations/<name>/%05d.png      palette PNG: 0 background, 1 labelled digit, 2 second
    OUT/davis/ImageSets/2017/val.txt           the sequences written

Clip i of a split depends only on (seed, split, i) and the settings, not on the clip counts.
"""
import functools
import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sigma.engine.files import atomic_write_text

from .synthetic import DIRECTIONS, GENERATOR, _save_image, check_seed_and_fps, davis_palette, prepare_output, write_mp4

DIGITS = tuple(str(d) for d in range(10))
SPLITS = ("train", "val")
_UNIT = {"right": (0.0, 1.0), "left": (0.0, -1.0), "down": (1.0, 0.0), "up": (-1.0, 0.0)}  # (dy, dx)
# Defaults: 64² frames so the tiny config runs at data.img_size=64 without resizing; ≥ 667 val
# clips so one clip moves a val accuracy by at most 0.15 points (the val pool holds 896 images);
# DAVIS folders for the first 200 val clips, enough for a segmentation mean, and each clip's 32
# small files cost more to write than its video.
DEFAULTS = dict(train=1800, val=800, frames=16, size=64, digit_size=(24, 32), second_size=(14, 20), davis_clips=200)


@functools.lru_cache(maxsize=1)
def _digits():
    """float32 (1797, 8, 8) in [0, 1] and int64 (1797,) labels of scikit-learn's bundled digits."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _photos():
    """The two sample photographs (china, flower), float32 (213, 320, 3), halved with a box filter so
    a 64-px crop spans about a sixth of the picture."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    return tuple(np.asarray(Image.fromarray(img).reduce(2), dtype=np.float32) for img in load_sample_images().images)


def image_pools(seed=0):
    """(train, val): disjoint int64 index arrays into the 1797 digits, half of each class each
    (train gets the odd one out), in an order fixed by `seed`."""
    _, labels = _digits()
    rng = np.random.default_rng([seed, 2])
    train, val = [], []
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(labels == d))
        train.append(idx[:(len(idx) + 1) // 2])
        val.append(idx[(len(idx) + 1) // 2:])
    return tuple(rng.permutation(np.concatenate(part)) for part in (train, val))


def _upsample_matrix(n_in, n_out):
    """(n_out, n_in) bilinear weights (pixel centres aligned, edges clamped): `W @ img @ W.T`
    upsamples an image, and one einsum upsamples a whole stack of them."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    return np.stack([np.interp(pos, np.arange(n_in), row) for row in np.eye(n_in)], axis=1).astype(np.float32)


def digit_alpha(image, side):
    """float32 (side, side) opacity in [0, 1] of an 8×8 digit image (values in [0, 1]) upsampled to
    side px; a one-pixel transparent border first, so the strokes fade out instead of ending in the
    sprite's square edge."""
    image = np.pad(image, 1)
    w = _upsample_matrix(image.shape[-1], side)
    return np.clip(w @ image @ w.T, 0.0, 1.0)


def _trajectory(rng, size, side, frames, unit, speed):
    """int (frames, 2) top-left corners of a straight constant-velocity path inside the frame."""
    room = size - side
    v = min(rng.uniform(*speed), room / max(frames - 1, 1))
    travel = v * (frames - 1)
    along, across = rng.uniform(0, room - travel), rng.uniform(0, room)
    t = np.arange(frames) * v
    dy, dx = unit
    if dx:
        xs, ys = (along + t if dx > 0 else room - along - t), np.full(frames, across)
    else:
        ys, xs = (along + t if dy > 0 else room - along - t), np.full(frames, across)
    return np.rint(np.stack([ys, xs], axis=1)).astype(np.int64)


def _panning_background(rng, frames, size, zoom=(0.8, 1.6), pan_speed=(0.25, 0.75)):
    """float32 (frames, size, size, 3): a crop of a sample photo, zoomed by `zoom` photo px per
    frame px, panning in a random direction at `pan_speed` photo px per frame (never still, so two
    time steps never repeat), darkened and recoloured per clip (low contrast under the digits),
    with two faint gratings drifting over it."""
    photo = _photos()[int(rng.integers(2))]
    h, w, _ = photo.shape
    scale = rng.uniform(*zoom)
    speed, angle = rng.uniform(*pan_speed), rng.uniform(0, 2 * np.pi)
    t = np.arange(frames, dtype=np.float64)
    shift_y, shift_x = speed * np.sin(angle) * t, speed * np.cos(angle) * t
    span = scale * size
    y0 = rng.uniform(-shift_y.min(), h - 1 - span - shift_y.max())
    x0 = rng.uniform(-shift_x.min(), w - 1 - span - shift_x.max())
    grid = scale * (np.arange(size) + 0.5) - 0.5
    ys = (y0 + shift_y)[:, None] + grid  # (F, S) photo rows of every frame row
    xs = (x0 + shift_x)[:, None] + grid
    iy, ix = np.clip(np.floor(ys).astype(np.int64), 0, h - 2), np.clip(np.floor(xs).astype(np.int64), 0, w - 2)
    fy, fx = (ys - iy).astype(np.float32), (xs - ix).astype(np.float32)
    # Bilinear sampling is separable (rows depend on (frame, y), columns on (frame, x)): blend the
    # two photo rows of every output row, then the two columns, on the columns the clip visits only.
    lo, hi = ix.min(), ix.max() + 2
    band = photo[:, lo:hi]
    rows = band[iy] * (1 - fy)[..., None, None] + band[iy + 1] * fy[..., None, None]  # (F, S, hi - lo, 3)
    c0 = (ix - lo)[:, None, :, None]
    img = (np.take_along_axis(rows, c0, axis=2) * (1 - fx)[:, None, :, None]
           + np.take_along_axis(rows, c0 + 1, axis=2) * fx[:, None, :, None])
    gain = rng.uniform(0.25, 0.45) * rng.uniform(0.85, 1.15, size=3)
    img = img * gain.astype(np.float32) + np.float32(rng.uniform(5, 30))
    # Parts of the photos are flat (sky, the flower's blurred backdrop); two faint drifting gratings
    # (wavelength 6-16 px, 3-6 grey levels) keep every tube textured without adding noise.
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    for _ in range(2):
        theta, wavelength = rng.uniform(0, np.pi), rng.uniform(6, 16)
        phase = np.float32(2 * np.pi / wavelength) * (xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta)))
        drift = (rng.uniform(0.1, 0.4) * rng.choice((-1, 1)) * t + rng.uniform(0, 2 * np.pi)).astype(np.float32)
        img += np.float32(rng.uniform(3, 6)) * np.sin(phase + drift[:, None, None])[..., None]
    return img


def _paint(video, masks, alpha, colour, corners, obj_id):
    """Composite one digit (opacity (side, side), colour (3,)) at corners (F, 2) into video
    (F, S, S, 3) float in place; mask pixels with opacity ≥ ½ get obj_id."""
    side = alpha.shape[0]
    f = np.arange(len(corners))[:, None, None]
    r = corners[:, 0, None, None] + np.arange(side)[None, :, None]
    c = corners[:, 1, None, None] + np.arange(side)[None, None, :]
    a = alpha[None, :, :, None]
    video[f, r, c] = video[f, r, c] * (1 - a) + colour * a
    masks[f, r, c] = np.where(alpha >= 0.5, np.uint8(obj_id), masks[f, r, c])


def _check_clip_settings(frames, size, digit_size, second_size):
    if not isinstance(frames, (int, np.integer)) or frames < 2:
        raise ValueError(f"frames must be an int of at least 2, got {frames!r}")
    for name, pair in (("digit_size", digit_size), ("second_size", second_size)):
        if len(pair) != 2 or not 8 <= pair[0] <= pair[1]:
            raise ValueError(f"{name} must be (min, max) pixels with 8 <= min <= max, got {pair!r}")
    if not isinstance(size, (int, np.integer)) or size % 2 or max(digit_size[1], second_size[1]) >= size:
        raise ValueError(f"size must be an even int larger than the digits ({max(digit_size[1], second_size[1])} px), "
                         f"got {size!r}")


def render_digit_clip(seed, split, index, *, frames=16, size=64, digit_size=(24, 32), second_size=(14, 20),
                      speed=(1.0, 2.0), second_prob=0.5, occlude_prob=0.5):
    """Frames uint8 (F, size, size, 3), masks uint8 (F, size, size) (1 the labelled digit, 2 the
    second) and labels (digit, motion) of clip `index` of `split` ("train" or "val")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _check_clip_settings(frames, size, digit_size, second_size)
    s = SPLITS.index(split)
    images, labels = _digits()
    pool = image_pools(seed)[s]
    rng = np.random.default_rng([seed, s, index])
    first = int(pool[index % len(pool)])  # the first len(pool) clips of a split show distinct images
    digit, motion = int(labels[first]), index % len(DIRECTIONS)
    layers = [(first, digit_size, _UNIT[DIRECTIONS[motion]])]
    if rng.random() < second_prob:
        others = pool[labels[pool] != digit]
        unit = _UNIT[DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]]
        layers.append((int(others[rng.integers(len(others))]), second_size, unit))
    video = _panning_background(rng, frames, size)
    masks = np.zeros((frames, size, size), dtype=np.uint8)
    painted = []
    for img, sides, unit in layers:
        side = int(rng.integers(sides[0], sides[1] + 1))
        colour = 255.0 - rng.uniform(0, 70, size=3)  # bright, slightly tinted
        painted.append((digit_alpha(images[img], side), colour, _trajectory(rng, size, side, frames, unit, speed)))
    order = [1]  # back to front: the labelled digit on top, except in `occlude_prob` of two-digit clips
    if len(layers) == 2:
        order = [1, 2] if rng.random() < occlude_prob else [2, 1]
    for obj_id in order:
        _paint(video, masks, *painted[obj_id - 1], obj_id)
    return np.rint(np.clip(video, 0, 255)).astype(np.uint8), masks, (digit, motion)


def _write_clip(out, name, clip, masks, fps, palette):
    """The clip's mp4 and, when `masks` is given, its DAVIS frames and palette masks."""
    from PIL import Image
    write_mp4(os.path.join(out, "videos", f"{name}.mp4"), clip, fps=fps)
    if masks is None:
        return
    for f in range(len(clip)):
        _save_image(Image.fromarray(clip[f]), os.path.join(out, "davis", "JPEGImages", name, f"{f:05d}.jpg"),
                    format="JPEG", quality=95, subsampling=0)  # 4:4:4: no colour bleed at the digits' edges
        png = Image.frombytes("P", masks.shape[:0:-1], masks[f].tobytes())
        png.putpalette(palette)
        _save_image(png, os.path.join(out, "davis", "Annotations", name, f"{f:05d}.png"), format="PNG")


def make_digits_dataset(out, train=DEFAULTS["train"], val=DEFAULTS["val"], seed=0, *, frames=DEFAULTS["frames"],
                        size=DEFAULTS["size"], digit_size=DEFAULTS["digit_size"], second_size=DEFAULTS["second_size"],
                        davis_clips=DEFAULTS["davis_clips"], fps=25):
    """Write Moving Digits (layout in this module's docstring) and return its paths:
    {"root", "train", "val", "classes", "davis"}. `davis_clips`: how many val clips (the first ones)
    also get DAVIS-layout frames and masks (at most `val`; 0 writes no davis folder). A set this
    module or sigma.data.synthetic wrote in `out` before is replaced whole (`prepare_output`)."""
    for name, v, low in (("train", train, 1), ("val", val, 1), ("davis_clips", davis_clips, 0)):
        if not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name} must be an int of at least {low}, got {v!r}")
    check_seed_and_fps(seed, fps)
    _check_clip_settings(frames, size, digit_size, second_size)
    davis_clips = min(davis_clips, val)
    out = prepare_output(out)
    # info.json first: a run killed half-way leaves a folder the next run recognises and clears.
    pools = image_pools(seed)
    info = {"generator": GENERATOR, "kind": "digits", "train": train, "val": val, "seed": seed,
            "frames": frames, "size": size, "digit_size": list(digit_size), "second_size": list(second_size),
            "davis_clips": davis_clips, "fps": fps, "train_images": len(pools[0]), "val_images": len(pools[1])}
    atomic_write_text(os.path.join(out, "info.json"), json.dumps(info, indent=1) + "\n")
    palette = davis_palette().flatten().tolist()
    lines = {"train": [], "val": []}
    # Writing is mostly waiting for fsync (every file is written atomically): a few threads overlap
    # those waits with the rendering. Each file's bytes depend only on its clip, not on the order.
    with ThreadPoolExecutor(max_workers=4) as writers:
        pending = deque()
        for split, count in (("train", train), ("val", val)):
            for i in range(count):
                name = f"{split}{i:05d}"
                clip, masks, (digit, motion) = render_digit_clip(seed, split, i, frames=frames, size=size,
                                                                 digit_size=digit_size, second_size=second_size)
                davis = split == "val" and i < davis_clips
                pending.append(writers.submit(_write_clip, out, name, clip, masks if davis else None, fps, palette))
                lines[split].append(f"videos/{name}.mp4 {digit} {motion}\n")
                while len(pending) > 16:  # bounded memory; also surfaces a failed write early
                    pending.popleft().result()
        for job in pending:
            job.result()
    for split, rows in lines.items():
        atomic_write_text(os.path.join(out, f"{split}.txt"), "".join(rows))
    if davis_clips:
        atomic_write_text(os.path.join(out, "davis", "ImageSets", "2017", "val.txt"),
                          "".join(f"val{i:05d}\n" for i in range(davis_clips)))
    atomic_write_text(os.path.join(out, "classes.json"),
                      json.dumps({"digit": list(DIGITS), "motion": list(DIRECTIONS)}, indent=1) + "\n")
    return {"root": out, "train": os.path.join(out, "train.txt"), "val": os.path.join(out, "val.txt"),
            "classes": os.path.join(out, "classes.json"),
            "davis": os.path.join(out, "davis") if davis_clips else None}
