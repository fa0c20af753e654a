"""Unsupervised video object segmentation scoring (appendix C): known answers and independent checks."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sigma.evaluate.segmentation import (
    NothingToScore,
    class_iou,
    clip_windows,
    confusion,
    constant_feature_miou,
    match_hungarian,
    match_precision,
    reduce_scores,
    segment_clip,
)

pytest.importorskip("sklearn")
pytest.importorskip("scipy")


def _blocky_masks(t=8, cells=14, cell_px=4, n_objects=2, seed=0):
    """(T, cells·cell_px, ...) masks made of whole token cells, constant over each pair of frames,
    plus the per-token labels (T/2, cells, cells)."""
    rng = np.random.default_rng(seed)
    tok = np.zeros((t // 2, cells, cells), dtype=np.int64)
    for ti in range(t // 2):
        for obj in range(1, n_objects + 1):
            y, x = rng.integers(0, cells - 5, size=2)
            tok[ti, y:y + 4 + obj % 2, x:x + 5] = obj
    masks = np.repeat(np.kron(tok, np.ones((cell_px, cell_px), dtype=np.int64)), 2, axis=0)
    return masks, tok


def _onehot_features(tok, n_classes, noise=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.one_hot(torch.from_numpy(tok), n_classes).float()
    return f + noise * torch.randn(f.shape, generator=g)


@pytest.mark.parametrize("background", ["class", "ignore"])
def test_onehot_ground_truth_features_score_one(background):
    masks, tok = _blocky_masks(n_objects=3)
    feats = _onehot_features(tok, 4)
    r = segment_clip(feats, masks, background=background, n_init=4)
    assert r["k_clustering"] == (4 if background == "class" else 3)
    assert r["miou_clustering"] > 0.99
    assert r["miou_overclustering"] > 0.99


def test_constant_features_give_the_documented_score():
    masks = np.zeros((4, 32, 32), dtype=np.int64)
    masks[:, :16, :16] = 1  # object = 1/4 of every frame, background 3/4
    feats = torch.ones(2, 7, 7, 5)
    r = segment_clip(feats, masks, n_init=1)
    assert constant_feature_miou(masks) == pytest.approx(0.75 / 2)
    assert r["miou_clustering"] == pytest.approx(0.375)
    assert r["miou_overclustering"] == pytest.approx(0.375)


def test_noise_features_score_far_below_onehot():
    masks, _tok = _blocky_masks(n_objects=2, seed=3)
    g = torch.Generator().manual_seed(0)
    r = segment_clip(torch.randn(4, 14, 14, 8, generator=g), masks, n_init=2)
    assert r["miou_clustering"] < 0.6


def _brute_force_best(conf):
    """max over injective cluster→class maps of the matched pixel count (exhaustive)."""
    k, n = conf.shape
    best = 0
    if k <= n:
        for cols in itertools.permutations(range(n), k):
            best = max(best, sum(conf[i, c] for i, c in enumerate(cols)))
    else:
        for rows in itertools.permutations(range(k), n):
            best = max(best, sum(conf[r, j] for j, r in enumerate(rows)))
    return best


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 5), n=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_hungarian_matches_brute_force(k, n, seed):
    conf = np.random.default_rng(seed).integers(0, 50, size=(k, n))
    mapping = match_hungarian(conf)
    assert sorted(c for c in mapping if c >= 0) == sorted({c for c in mapping if c >= 0})  # one-to-one
    assert (mapping >= 0).sum() == min(k, n)
    assert sum(conf[i, c] for i, c in enumerate(mapping) if c >= 0) == _brute_force_best(conf)


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 7), n=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_precision_matching_and_iou_match_pixelwise_definitions(k, n, seed):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, k, size=300)
    classes = np.array(sorted(rng.choice(10, size=n, replace=False)))
    gt = classes[rng.integers(0, n, size=300)]
    conf = confusion(pred, gt, k, classes)
    mapping = match_precision(conf)
    for i in range(k):
        in_cluster = pred == i
        if in_cluster.any():
            prec = [np.mean(gt[in_cluster] == c) for c in classes]
            assert prec[mapping[i]] == max(prec)
    inter, union = class_iou(conf, mapping)
    mapped = classes[mapping[pred]]
    for j, c in enumerate(classes):
        i_ref = np.sum((mapped == c) & (gt == c))
        u_ref = np.sum((mapped == c) | (gt == c))
        assert inter[j] == i_ref and union[j] == u_ref


def test_reductions_and_windows():
    a = {"miou_clustering": 1.0, "miou_overclustering": 0.5, "intersection_clustering": 10.0,
         "union_clustering": 10.0, "intersection_overclustering": 1.0, "union_overclustering": 4.0}
    b = {"miou_clustering": 0.0, "miou_overclustering": 0.5, "intersection_clustering": 0.0,
         "union_clustering": 30.0, "intersection_overclustering": 3.0, "union_overclustering": 4.0}
    clips = [("s1", a), ("s1", a), ("s2", b)]
    assert reduce_scores(clips, "sequence")["miou_clustering"] == pytest.approx(0.5)
    assert reduce_scores(clips, "clip")["miou_clustering"] == pytest.approx(2 / 3)
    assert reduce_scores(clips, "pooled")["miou_clustering"] == pytest.approx(20 / 50)
    assert clip_windows(35, 16) == [list(range(16)), list(range(16, 32))]
    assert clip_windows(5, 4, stride=2) == [[0, 2, 4, 4]]
    with pytest.raises(ValueError, match="reduction"):
        reduce_scores(clips, "mean")


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="multiple"):
        segment_clip(torch.zeros(3, 4, 4, 2), np.zeros((8, 16, 16), dtype=np.int64))
    with pytest.raises(ValueError, match="background"):
        segment_clip(torch.zeros(4, 4, 4, 2), np.zeros((8, 16, 16), dtype=np.int64), background="no")


def _two_class_masks():
    masks = np.zeros((4, 32, 32), dtype=np.int64)
    masks[:, :16, :16] = 1
    return masks


@pytest.mark.parametrize("case", ["all background", "one object, background ignored", "background is ignore_index",
                                  "every pixel ignored", "size 1"])
def test_a_clip_with_fewer_than_two_classes_is_not_scored(case):
    """One class scores a perfect 1.0 whatever the features (k = 1): nothing to segment."""
    masks, kw = _two_class_masks(), {}
    if case == "all background":
        masks[:] = 0
    elif case == "one object, background ignored":
        kw = {"background": "ignore"}
    elif case == "background is ignore_index":
        kw = {"ignore_index": 0}
    elif case == "every pixel ignored":
        masks[:] = 255
    else:
        kw = {"size": 1, "overclustering_k": 2}  # one pixel per frame: one class
    with pytest.raises(NothingToScore, match="fewer than 2 classes to score"):
        segment_clip(torch.randn(2, 4, 4, 3), masks, n_init=1, **kw)


def test_overclustering_k_above_the_feature_points_is_a_clear_error():
    """k = 100000 was clamped to the clip's points while the result recorded 100000."""
    with pytest.raises(ValueError, match=r"overclustering_k \(--overclustering-k\) = 33 is more than the clip's 32 "
                                         r"feature points \(2 time steps x --size 4²\)"):
        segment_clip(torch.randn(2, 4, 4, 3), _two_class_masks(), size=4, overclustering_k=33, n_init=1)
    masks = np.zeros((4, 32, 32), dtype=np.int64)
    masks[:, :8, :8], masks[:, 8:16, :8] = 1, 2  # 2 feature positions per time step once background is ignored
    with pytest.raises(NothingToScore, match="4 feature points are scored, fewer than k = 6"):
        segment_clip(torch.randn(2, 4, 4, 3), masks, size=4, background="ignore", n_init=1)


def _tiny_davis(root, frames=3, size=(24, 16), ext=".jpg"):
    """A DAVIS-layout folder with one sequence 'seq' of small frames and two-class masks."""
    from PIL import Image

    for sub in ("JPEGImages", "Annotations"):
        (root / sub / "seq").mkdir(parents=True)
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 40 * i, np.uint8)
        Image.fromarray(frame).save(root / "JPEGImages" / "seq" / f"{i:05d}{ext}")
        mask = np.zeros((size[1], size[0]), np.uint8)
        mask[:8, :8] = 1
        Image.fromarray(mask, mode="L").save(root / "Annotations" / "seq" / f"{i:05d}.png")
    return root / "JPEGImages", root / "Annotations"


@pytest.mark.parametrize("case, match", [
    ("truncated jpeg", r"cannot read frame '.*00001\.jpg' \(OSError: Truncated File Read"),
    ("empty jpeg", r"cannot read frame '.*00001\.jpg' \(UnidentifiedImageError"),
    ("truncated png", r"cannot read frame '.*00001\.png' \(OSError"),
    ("truncated mask", r"cannot read mask '.*Annotations/seq/00001\.png' \(OSError"),
    ("frame of another size", r"frame '.*00001\.jpg' is 20x16 pixels but 00000\.jpg is 24x16: every frame"),
    ("mask of another size", r"mask '.*00001\.png' is 20x16 pixels but the frames are 24x16"),
])
def test_corrupt_frame_files_are_clear_errors_naming_the_sequence_and_file(tmp_path, case, match):
    """Were raw tracebacks: `Truncated File Read`, UnidentifiedImageError, `all input arrays must
    have the same shape`."""
    from PIL import Image

    from sigma.evaluate.segmentation import read_sequence

    frames_dir, masks_dir = _tiny_davis(tmp_path, ext=".png" if case == "truncated png" else ".jpg")
    frame = next((frames_dir / "seq").glob("00001.*"))
    if case in ("truncated jpeg", "truncated png"):
        frame.write_bytes(frame.read_bytes()[:len(frame.read_bytes()) // 2])
    elif case == "empty jpeg":
        frame.write_bytes(b"")
    elif case == "truncated mask":
        mask = masks_dir / "seq" / "00001.png"
        mask.write_bytes(mask.read_bytes()[:60])
    elif case == "frame of another size":
        Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(frame)
    else:
        Image.fromarray(np.zeros((16, 20), np.uint8), mode="L").save(masks_dir / "seq" / "00001.png")
    with pytest.raises(ValueError, match=r"sequence 'seq': " + match):
        read_sequence(frames_dir, masks_dir, "seq")


def test_sequences_empty_list_is_an_error_and_a_string_is_one_name(tmp_path):
    """`--sequences "[]"` silently meant every sequence; a string was taken letter by letter."""
    from sigma.evaluate.segmentation import davis_sequences

    _tiny_davis(tmp_path)
    with pytest.raises(ValueError, match=r"sequences \(--sequences\): expected one or more sequence names, got an "
                                         r"empty list; leave it unset for every sequence"):
        davis_sequences(tmp_path, sequences=[])
    assert davis_sequences(tmp_path, sequences="seq")[2] == ["seq"]
    assert davis_sequences(tmp_path)[2] == ["seq"]
