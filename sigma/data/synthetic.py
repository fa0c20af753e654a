"""A synthetic video set a test or a new user can make in seconds.

    python -m sigma.data.synthetic OUT --videos N --seed S
    python -m sigma.data.synthetic OUT --kind digits [--train N --val N]   (Moving Digits: sigma.data.digits)

Each clip shows one labelled object (a drawn shape in its class's colour: the object class) moving
in a straight line (one of four directions: the motion class) over a static textured background,
sometimes with a second, unlabelled object of another shape moving behind it. Written:

    OUT/videos/<name>.mp4                      H.264 (libx264, yuv420p) through PyAV
    OUT/train.txt, OUT/val.txt                 disjoint; lines `videos/<name>.mp4 <object> <motion>`
    OUT/classes.json                           {"object": [...], "motion": [...]}
    OUT/info.json                              the generator's settings
    OUT/davis/JPEGImages/<name>/%05d.jpg       the same frames, before video compression
    OUT/davis/Annotations/<name>/%05d.png      palette PNG: 0 background, 1 labelled object, 2 second
    OUT/davis/ImageSets/2017/{train,val}.txt   sequence names

Video i depends only on (seed, i) and its settings, not on N. Objects are 32-48 px on 128² frames,
about one 16-px token after the tiny config's resize to 64²: too small for a tiny ViT to learn the
silhouettes from a few hundred clips, hence the class colours (docs/data.md, "Synthetic set").
"""
import argparse
import colorsys
import json
import os
import shutil
import time

import numpy as np

from sigma.engine.files import atomic_write, atomic_write_text

SHAPES = ("circle", "square", "triangle", "cross", "ring")
DIRECTIONS = ("right", "left", "down", "up")
_STEP = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}  # (dy, dx)
GENERATOR = "sigma.data.synthetic"  # info.json's "generator", of both kinds of set
# What a set consists of: all that `prepare_output` removes before a set is written again.
_OUTPUTS = ("videos", "davis", "train.txt", "val.txt", "classes.json", "info.json")


def shape_mask(shape, side):
    """bool (side, side) silhouette of a shape class."""
    c = (side - 1) / 2
    y, x = np.mgrid[:side, :side] - c
    r = side / 2
    if shape == "circle":
        return x * x + y * y <= r * r
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "triangle":  # apex up, base at the bottom
        return np.abs(x) <= (y + r) / 2
    if shape == "cross":
        return (np.abs(x) <= side / 6) | (np.abs(y) <= side / 6)
    if shape == "ring":
        d2 = x * x + y * y
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def davis_palette():
    """The 256-colour palette DAVIS annotations use (PASCAL VOC's bit-spread colour map)."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def _background(rng, size):
    """Muted texture: smooth colour noise plus oriented stripes, uint8 (size, size, 3)."""
    coarse = rng.uniform(60, 170, size=(3, 6, 6))
    # Bilinear upsampling of the coarse noise (np.interp per axis; no image library needed).
    pos = np.linspace(0, 5, size)
    rows = np.stack([[np.interp(pos, np.arange(6), coarse[ch, :, j]) for j in range(6)] for ch in range(3)])
    smooth = np.stack([[np.interp(pos, np.arange(6), rows[ch, :, i]) for i in range(size)] for ch in range(3)])
    theta, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.5)
    y, x = np.mgrid[:size, :size]
    stripes = 18 * np.sin(freq * (x * np.cos(theta) + y * np.sin(theta)))
    img = smooth.transpose(2, 1, 0) + stripes[..., None] + rng.normal(0, 4, size=(size, size, 3))
    return np.clip(img, 0, 255)


def object_colour(rng, shape_id):
    """RGB float (3,) of an object of class `shape_id`: a saturated, bright colour whose hue lies within
    ±15° of the class's own (classes 72° apart), so the class shows in a clip's colours as well as in
    its silhouette."""
    hue = (shape_id / len(SHAPES) + rng.uniform(-15, 15) / 360) % 1.0
    return 255 * np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0)))


def _object_texture(rng, side, shape_id):
    """The class's colour (`object_colour`) with a checker pattern, float (side, side, 3)."""
    colour = object_colour(rng, shape_id)
    cell = max(2, side // 6)
    y, x = np.mgrid[:side, :side]
    checker = (((y // cell) + (x // cell)) % 2)[..., None] * 2 - 1
    return np.clip(colour + 25 * checker, 0, 255)


def _trajectory(rng, size, side, frames, direction):
    """Top-left corners (frames, 2) of a straight motion that stays inside the frame."""
    dy, dx = _STEP[direction]
    room = size - side
    speed = min(rng.uniform(1.0, 2.0), room / max(frames - 1, 1))
    travel = speed * (frames - 1)
    along = rng.uniform(0, room - travel)
    across = rng.uniform(0, room)
    t = np.arange(frames) * speed
    if dx:
        xs = along + t if dx > 0 else room - along - t
        ys = np.full(frames, across)
    else:
        ys = along + t if dy > 0 else room - along - t
        xs = np.full(frames, across)
    return np.rint(np.stack([ys, xs], axis=1)).astype(int)


def clip_labels(seed, index):
    """(object, motion) class of clip `index`: the object cycles (index mod 5, so every split of
    every-n-th clips is balanced in objects); the motion is drawn from its own seeded stream,
    independent of the object and of the split.

    Why drawn: the earlier rule, motion = (index + index // 5) mod 4, tied the motion's parity to
    the object's (10 of the 20 pairs occurred), and with every fourth clip in val, each object's
    val motion was one its train clips rarely had: a model that read the motion to tell the object
    (or the reverse) scored 0% on the 64-clip set's val, below chance, while learning its train set.
    """
    motion = np.random.default_rng([seed, index, 1]).integers(len(DIRECTIONS))
    return index % len(SHAPES), int(motion)


def render_clip(seed, index, *, frames=40, size=128, object_size=(32, 48), max_objects=2):
    """Frames uint8 (F, size, size, 3), masks uint8 (F, size, size) and labels (object, motion) of
    clip `index`; object ids in the masks: 1 the labelled object, 2 the optional second one."""
    rng = np.random.default_rng([seed, index])
    shape_id, motion_id = clip_labels(seed, index)
    objects = [(shape_id, motion_id)]
    if max_objects >= 2 and rng.random() < 0.5:
        other = (shape_id + 1 + int(rng.integers(len(SHAPES) - 1))) % len(SHAPES)
        objects.append((other, int(rng.integers(len(DIRECTIONS)))))
    background = _background(rng, size)
    video = np.repeat(background[None], frames, axis=0)
    masks = np.zeros((frames, size, size), dtype=np.uint8)
    # Paint back to front, so object 1 (the labelled one) is on top.
    for obj_id in range(len(objects), 0, -1):
        shape, direction = objects[obj_id - 1]
        side = int(rng.integers(object_size[0], object_size[1] + 1))
        if obj_id > 1:
            side = object_size[0]
        silhouette = shape_mask(SHAPES[shape], side)
        texture = _object_texture(rng, side, shape)
        for f, (y, x) in enumerate(_trajectory(rng, size, side, frames, DIRECTIONS[direction])):
            video[f, y:y + side, x:x + side][silhouette] = texture[silhouette]
            masks[f, y:y + side, x:x + side][silhouette] = obj_id
    return video.round().astype(np.uint8), masks, (shape_id, motion_id)


def write_mp4(path, frames, fps=25):
    """uint8 (F, H, W, 3) RGB frames → H.264 mp4 (yuv420p), written atomically. Reproducible bytes:
    one encoder thread, and x264's C code paths (`no-asm`): its assembly gave different bytes for the
    same frames on some 64² Moving Digits clips (PyAV 18.1), at about twice the encoding time."""
    import av

    def write(tmp):
        with av.open(tmp, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast",
                                                                        "x264-params": "no-asm=1"})
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.codec_context.thread_count = 1
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))
    # A generated set can be generated again: no fsync per clip (atomic_write's durable=False).
    atomic_write(path, write, durable=False)


def _save_image(image, path, **kwargs):
    atomic_write(path, lambda tmp: image.save(tmp, **kwargs), durable=False)


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_seed_and_fps(seed, fps):
    """ValueError naming the argument unless seed is an int >= 0 and fps one >= 1 (both generators)."""
    if not _is_int(seed) or seed < 0:  # numpy's own error for -1 names no argument
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not _is_int(fps) or fps < 1:  # PyAV writes 24 fps for 0 and fails on a float
        raise ValueError(f"fps must be a positive int, got {fps!r}")


def _check_settings(videos, seed, frames, size, object_size, max_objects, val_every, fps):
    """ValueError naming the first bad argument of `make_synthetic_dataset`, before anything is written."""
    check_seed_and_fps(seed, fps)
    for name, value, low, why in (("videos", videos, 2, " (one train, one val clip)"), ("frames", frames, 2, ""),
                                  ("val_every", val_every, 2, "")):
        if not _is_int(value) or value < low:
            raise ValueError(f"{name} must be an int of at least {low}{why}, got {value!r}")
    if (not isinstance(object_size, (tuple, list)) or len(object_size) != 2 or not all(map(_is_int, object_size))
            or not 4 <= object_size[0] <= object_size[1]):
        raise ValueError(f"object_size must be a (min, max) pair of ints with 4 <= min <= max, got {object_size!r}")
    if not _is_int(size) or size % 2 or size <= object_size[1]:
        raise ValueError(f"size must be an even int larger than the objects ({object_size[1]} px), got {size!r}")
    if not _is_int(max_objects) or max_objects not in (1, 2):
        raise ValueError(f"max_objects must be 1 or 2, got {max_objects!r}")


def _written_here(out):
    """Whether `out`/info.json names this generator (a corrupt or missing one does not)."""
    try:
        with open(os.path.join(out, "info.json")) as f:
            return json.load(f).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def prepare_output(out):
    """Make folder `out` ready for a new set: remove the set this generator wrote there before (only
    its own `_OUTPUTS`: a smaller set would otherwise leave the old clips, frames and sequences behind,
    which `segment` would score), and create out/videos. ValueError naming `out` when it is a file,
    cannot be created, or holds videos/ or davis/ that this generator did not write."""
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"output folder {out!r} is an existing file, not a folder")
    if _written_here(out):
        for name in _OUTPUTS:
            path = os.path.join(out, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
    else:
        foreign = [name for name in ("videos", "davis") if os.path.lexists(os.path.join(out, name))]
        if foreign:
            raise ValueError(f"output folder {out!r} already holds {foreign[0]}/ that {GENERATOR} did not write "
                             f"(no info.json naming it); choose a new or empty folder")
    try:
        os.makedirs(os.path.join(out, "videos"), exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create output folder {out!r}: {exc.strerror or exc}") from exc
    return out


def make_synthetic_dataset(out, videos=8, seed=0, *, frames=40, size=128, object_size=(32, 48),
                           max_objects=2, val_every=4, fps=25, davis=True):
    """Write the synthetic set (layout in this module's docstring) and return its paths:
    {"root", "train", "val", "classes", "davis"}. Every `val_every`-th clip goes to val.txt (the last
    one when there are fewer than `val_every` clips), the others to train.txt. A set this generator
    wrote in `out` before is replaced whole (`prepare_output`)."""
    _check_settings(videos, seed, frames, size, object_size, max_objects, val_every, fps)
    from PIL import Image
    out = prepare_output(out)
    # info.json first: a run killed half-way leaves a folder the next run recognises and clears.
    info = {"generator": GENERATOR, "videos": videos, "seed": seed, "frames": frames, "size": size,
            "object_size": list(object_size), "max_objects": max_objects, "val_every": val_every, "fps": fps}
    atomic_write_text(os.path.join(out, "info.json"), json.dumps(info, indent=1) + "\n")
    palette = davis_palette().flatten().tolist()
    splits = {"train": [], "val": []}
    for i in range(videos):
        name = f"clip{i:05d}"
        clip, masks, (obj, motion) = render_clip(seed, i, frames=frames, size=size, object_size=object_size,
                                                 max_objects=max_objects)
        write_mp4(os.path.join(out, "videos", f"{name}.mp4"), clip, fps=fps)
        is_val = i % val_every == val_every - 1 or (videos < val_every and i == videos - 1)
        split = "val" if is_val else "train"
        splits[split].append((name, f"videos/{name}.mp4 {obj} {motion}\n"))
        if davis:
            jpg_dir = os.path.join(out, "davis", "JPEGImages", name)
            png_dir = os.path.join(out, "davis", "Annotations", name)
            os.makedirs(jpg_dir, exist_ok=True)
            os.makedirs(png_dir, exist_ok=True)
            for f in range(frames):
                _save_image(Image.fromarray(clip[f]), os.path.join(jpg_dir, f"{f:05d}.jpg"), format="JPEG",
                            quality=95, subsampling=0)  # 4:4:4: no colour bleed across object edges
                png = Image.frombytes("P", (size, size), masks[f].tobytes())
                png.putpalette(palette)
                _save_image(png, os.path.join(png_dir, f"{f:05d}.png"), format="PNG")
    for split, rows in splits.items():
        atomic_write_text(os.path.join(out, f"{split}.txt"), "".join(line for _, line in rows))
        if davis:
            sets = os.path.join(out, "davis", "ImageSets", "2017")
            os.makedirs(sets, exist_ok=True)
            atomic_write_text(os.path.join(sets, f"{split}.txt"), "".join(f"{name}\n" for name, _ in rows))
    atomic_write_text(os.path.join(out, "classes.json"),
                      json.dumps({"object": list(SHAPES), "motion": list(DIRECTIONS)}, indent=1) + "\n")
    return {"root": out, "train": os.path.join(out, "train.txt"), "val": os.path.join(out, "val.txt"),
            "classes": os.path.join(out, "classes.json"), "davis": os.path.join(out, "davis") if davis else None}


def _as_option(message):
    """The functions' errors name their arguments (`seed must be ...`); the command's name its options."""
    for name in ("videos", "train", "val", "davis_clips", "seed", "frames", "size"):
        if message.startswith(f"{name} "):
            return f"--{name.replace('_', '-')}{message[len(name):]}"
    return message


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sigma.data.synthetic", description=__doc__.split("\n\n")[0],
                                epilog="--kind digits: Moving Digits (sigma.data.digits, docs/data.md)")
    p.add_argument("out", help="output folder (created; a set written there before by this command is replaced)")
    p.add_argument("--kind", choices=("shapes", "digits"), default="shapes",
                   help="shapes (default): drawn shapes over static textures; digits: Moving Digits")
    p.add_argument("--videos", type=int, default=None, help="shapes: number of clips (default 8)")
    p.add_argument("--train", type=int, default=None, help="digits: train clips (default 1800)")
    p.add_argument("--val", type=int, default=None, help="digits: val clips (default 800)")
    p.add_argument("--davis-clips", type=int, default=None,
                   help="digits: the first N val clips also get DAVIS frames and masks (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default 40 shapes, 16 digits)")
    p.add_argument("--size", type=int, default=None, help="frame side in pixels (default 128 shapes, 64 digits)")
    p.add_argument("--no-davis", action="store_true", help="skip the DAVIS-layout JPEG/PNG folders")
    args = p.parse_args(argv)
    given = {k for k in ("videos", "train", "val", "davis_clips") if getattr(args, k) is not None}
    wrong = given - ({"videos"} if args.kind == "shapes" else {"train", "val", "davis_clips"})
    if wrong:
        p.error(f"--{sorted(wrong)[0].replace('_', '-')} does not apply to --kind {args.kind}")
    start = time.perf_counter()
    try:
        if args.kind == "shapes":
            count = 8 if args.videos is None else args.videos
            # `is None`, not `or`: --frames 0 / --size 0 are errors, not the defaults.
            paths = make_synthetic_dataset(args.out, videos=count, seed=args.seed,
                                           frames=40 if args.frames is None else args.frames,
                                           size=128 if args.size is None else args.size, davis=not args.no_davis)
        else:
            from .digits import DEFAULTS, make_digits_dataset
            kw = {k: v for k, v in (("train", args.train), ("val", args.val), ("frames", args.frames),
                                    ("size", args.size), ("davis_clips", 0 if args.no_davis else args.davis_clips))
                  if v is not None}
            paths = make_digits_dataset(args.out, seed=args.seed, **kw)
            count = kw.get("train", DEFAULTS["train"]) + kw.get("val", DEFAULTS["val"])
    except ValueError as exc:
        p.error(_as_option(str(exc)))
    except OSError as exc:  # a full disk or a folder that turns unwritable mid-run: one line, no traceback
        p.error(f"writing to {args.out!r} failed: {exc}")
    seconds = time.perf_counter() - start
    print(f"wrote {count} clips to {paths['root']} in {seconds:.1f} s ({count / seconds:.1f} clips/s; "
          f"train: {paths['train']}, val: {paths['val']})")


if __name__ == "__main__":
    main()
