"""Moving Digits (`python -m sigma.data.synthetic OUT --kind digits`) and the pixel objective's
clip-blind baselines (`sigma.pretrain.baseline`)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("av")
pytest.importorskip("sklearn")

from sigma.data import open_video
from sigma.data.digits import DIGITS, digit_alpha, image_pools, make_digits_dataset, render_digit_clip
from sigma.data.synthetic import DIRECTIONS, main

FRAMES, SIZE = 8, 64
_STEP = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}  # (dy, dx)


def _lines(path):
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


@pytest.fixture(scope="module")
def clips():
    """(split, index, frames, masks, labels) of 24 rendered clips, 12 per split."""
    return [(split, i, *render_digit_clip(3, split, i, frames=FRAMES, size=SIZE))
            for split in ("train", "val") for i in range(12)]


def test_image_pools_are_disjoint_and_stratified():
    from sklearn.datasets import load_digits
    labels = load_digits().target
    train, val = image_pools(0)
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))
    assert np.abs(np.bincount(labels[train], minlength=10) - np.bincount(labels[val], minlength=10)).max() <= 1
    assert not np.array_equal(image_pools(1)[1], val)


def test_digit_alpha_fades_out_at_the_sprite_edge():
    image = np.ones((8, 8), dtype=np.float32)  # strokes up to the 8×8 border
    a = digit_alpha(image, 30)
    assert a.shape == (30, 30) and a.max() == pytest.approx(1.0)
    assert max(a[0].max(), a[-1].max(), a[:, 0].max(), a[:, -1].max()) < 0.5


def test_dataset_is_byte_identical_per_seed_and_has_the_layout(tmp_path, tree_bytes):
    kw = dict(train=3, val=2, frames=FRAMES, size=SIZE, davis_clips=1)
    a = make_digits_dataset(tmp_path / "a", seed=5, **kw)
    files_a = tree_bytes(a["root"])
    assert files_a == tree_bytes(make_digits_dataset(tmp_path / "b", seed=5, **kw)["root"])
    other = tree_bytes(make_digits_dataset(tmp_path / "c", seed=6, **kw)["root"])
    assert other["videos/val00000.mp4"] != files_a["videos/val00000.mp4"]
    train, val = _lines(a["train"]), _lines(a["val"])
    assert [r[0] for r in train] == [f"videos/train{i:05d}.mp4" for i in range(3)]
    assert [r[0] for r in val] == [f"videos/val{i:05d}.mp4" for i in range(2)]
    for _, digit, motion in train + val:
        assert 0 <= int(digit) < 10 and 0 <= int(motion) < len(DIRECTIONS)
    assert json.loads(files_a["classes.json"]) == {"digit": list(DIGITS), "motion": list(DIRECTIONS)}
    names = [f"{f:05d}" for f in range(FRAMES)]
    assert sorted(n for n in files_a if n.startswith("davis/JPEGImages/")) == \
        [f"davis/JPEGImages/val00000/{n}.jpg" for n in names]
    assert sorted(n for n in files_a if n.startswith("davis/Annotations/")) == \
        [f"davis/Annotations/val00000/{n}.png" for n in names]
    assert files_a["davis/ImageSets/2017/val.txt"] == b"val00000\n"
    assert json.loads(files_a["info.json"])["val_images"] == len(image_pools(5)[1])
    # The mp4 and the DAVIS frames show the rendered clip (up to compression), its label is the line's.
    frames, masks, labels = render_digit_clip(5, "val", 0, frames=FRAMES, size=SIZE)
    assert val[0][1:] == [str(labels[0]), str(labels[1])]
    decoded = open_video(os.path.join(a["root"], val[0][0]), "pyav").get_frames(list(range(FRAMES)))
    assert np.abs(decoded.astype(np.int16) - frames).mean() < 4
    jpg = np.asarray(Image.open(os.path.join(a["davis"], "JPEGImages", "val00000", "00003.jpg")), dtype=np.int16)
    png = Image.open(os.path.join(a["davis"], "Annotations", "val00000", "00003.png"))
    assert np.abs(jpg - frames[3]).mean() < 2 and png.mode == "P" and np.array_equal(np.asarray(png), masks[3])


@pytest.mark.parametrize("kwargs, match", [({"split": "test"}, "split must be one of"),
                                           ({"frames": 1}, "frames must be an int of at least 2"),
                                           ({"size": 32}, "size must be an even int larger than the digits"),
                                           ({"digit_size": (30, 20)}, "digit_size must be")])
def test_render_rejects_bad_settings(kwargs, match):
    kw = {"split": "val", **kwargs}
    with pytest.raises(ValueError, match=match):
        render_digit_clip(0, kw.pop("split"), 0, **kw)


def test_clip_depends_only_on_seed_split_and_index():
    a = render_digit_clip(0, "val", 7, frames=FRAMES, size=SIZE)
    b = render_digit_clip(0, "val", 7, frames=FRAMES, size=SIZE)
    c = render_digit_clip(0, "train", 7, frames=FRAMES, size=SIZE)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and not np.array_equal(a[0], c[0])


def test_labelled_digit_moves_straight_in_the_labelled_direction(clips):
    single = [c for c in clips if c[3].max() == 1]
    assert len(single) >= 3
    for _, _, _, masks, (_, motion) in single:
        dy, dx = _STEP[DIRECTIONS[motion]]
        areas = (masks == 1).sum(axis=(1, 2))
        assert areas.min() > 50 and (areas == areas[0]).all()  # whole digit, inside the frame
        centres = np.stack([np.argwhere(m == 1).mean(0) for m in masks])
        steps = np.diff(centres, axis=0)
        along, across = steps @ np.array([dy, dx]), steps @ np.array([dx, dy])
        # Constant velocity in the labelled direction, every frame (no bounce): 1-2 px ± rounding.
        assert (along >= 0.5).all() and (along <= 2.5).all() and np.abs(across).max() < 1e-9


def test_second_digit_passes_in_front_only_when_asked():
    """The labelled digit's visible area changes only when the second one passes in front of it:
    never with occlude_prob=0, in some clips with the default (½)."""
    varying = {}
    for occlude in (0.0, 0.5):
        varying[occlude] = 0
        for i in range(40):
            masks = render_digit_clip(0, "train", i, frames=FRAMES, size=SIZE, occlude_prob=occlude)[1]
            assert set(np.unique(masks)) <= {0, 1, 2}
            areas = (masks == 1).sum(axis=(1, 2))
            varying[occlude] += int((areas != areas[0]).any())
    assert varying[0.0] == 0 and varying[0.5] >= 1


def test_no_two_tubes_are_alike_and_none_is_flat(clips):
    """No flat background: every 2×16×16 (and 2×8×8) tube of the rendered clips is unique and
    textured in every channel, so neither a zero nor a copy predicts any of them."""
    for p in (16, 8):
        grid = (FRAMES // 2, 2, SIZE // p, p, SIZE // p, p, 3)
        tubes = np.concatenate([f.reshape(grid).transpose(0, 2, 4, 1, 3, 5, 6).reshape(-1, 2 * p * p, 3)
                                for _, _, f, _, _ in clips])
        assert len(np.unique(tubes.reshape(len(tubes), -1), axis=0)) == len(tubes)
        assert tubes.astype(np.float64).std(axis=1).min() > 0.5


def test_cli_digits(tmp_path, capsys):
    main([str(tmp_path / "d"), "--kind", "digits", "--train", "2", "--val", "2", "--frames", "4", "--no-davis"])
    printed = capsys.readouterr().out
    assert "wrote 4 clips" in printed and "clips/s" in printed
    assert len(_lines(tmp_path / "d" / "val.txt")) == 2 and not (tmp_path / "d" / "davis").exists()
    for argv, match in ((["--videos", "3"], "--videos does not apply"), (["--train", "0"], "train must be"),
                        (["--size", "30"], "size must be an even int larger")):
        with pytest.raises(SystemExit):
            main([str(tmp_path / "e"), "--kind", "digits", *argv])
        assert match in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "e"), "--train", "3"])  # shapes takes --videos


# --- the pixel objective's clip-blind baselines ------------------------------------------------------

BASELINE_CFG = ["data.img_size=64", "data.patch_size=8", "data.num_frames=8", "data.sampling_rate=1",
                "data.scales=[1.0]", "data.flip=false", "data.reader=pyav"]


@pytest.fixture(scope="module")
def half_flat(tmp_path_factory):
    """A lossless 8-frame 64² clip: 4 black frames, then 4 frames of one random 8×8 tile repeated,
    so with 2×8×8 tubes half of every clip's masked tubes are flat and the others all alike."""
    import av
    root = tmp_path_factory.mktemp("half_flat")
    tile = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    frames = np.zeros((8, 64, 64, 3), dtype=np.uint8)
    frames[4:] = np.tile(tile, (8, 8, 1))
    with av.open(str(root / "clip.mp4"), "w", format="mp4") as container:
        stream = container.add_stream("libx264rgb", rate=25, options={"crf": "0", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = 64, 64, "rgb24"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode(None))
    (root / "train.txt").write_text("clip.mp4 0\nclip.mp4 0\n")
    return root, tile


def test_pixel_baselines_against_float64(half_flat):
    from sigma.pretrain import load_config
    from sigma.pretrain.baseline import pixel_baselines
    root, tile = half_flat
    r = pixel_baselines(load_config("tiny", BASELINE_CFG), root / "train.txt")
    # The textured tube's target in float64: each channel over its 2·8·8 voxels, unbiased std.
    x = np.concatenate([tile, tile]).reshape(-1, 3) / 255.0
    u = (x - x.mean(0)) / (x.std(0, ddof=1) + 1e-6)
    q = float((u * u).mean())  # (P - 1)/P up to eps
    assert q == pytest.approx(127 / 128, rel=1e-4)
    assert r["clips"] == 2 and r["masked_tubes"] == 2 * 4 * 48 and r["target_dim"] == 384
    assert r["flat_tube_share"] == 0.5
    assert r["zeros"] == pytest.approx(q / 2, rel=1e-5)
    assert r["best_constant"] == pytest.approx(q / 4, rel=1e-5)


def test_pixel_baselines_cli(half_flat, tmp_path, capsys):
    from sigma.pretrain.baseline import main as baseline_main
    root, _ = half_flat
    out = tmp_path / "b.json"
    assert baseline_main(["--data", str(root / "train.txt"), "--clips", "1", "--output", str(out), *BASELINE_CFG]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) and printed["clips"] == 1
    assert baseline_main(["--data", str(root / "train.txt"), "--clips", "0", *BASELINE_CFG]) == 2
    assert "clips must be a positive int" in capsys.readouterr().err
