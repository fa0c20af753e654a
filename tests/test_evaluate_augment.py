"""Clip-correct mixup/cutmix and RandAugment (the two video pitfalls of image augmentations)."""
import random

import numpy as np
import pytest
import torch

from sigma.evaluate.augment import VideoMixup, VideoRandAugment, randaugment_normalized_clip

timm = pytest.importorskip("timm")
pytest.importorskip("PIL")


def _two_clips(t=4, h=16, w=12):
    return torch.stack([torch.zeros(3, t, h, w), torch.ones(3, t, h, w)])


def _is_box(mask2d):
    ys, xs = np.nonzero(mask2d)
    return mask2d[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()


def test_cutmix_cuts_height_and_width_in_every_frame():
    mix = VideoMixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=2)
    seen = 0
    for seed in range(20):
        np.random.seed(seed)
        video, target = mix(_two_clips(), torch.tensor([0, 1]))
        pasted = video[0].numpy() == 1.0  # (C, T, H, W): where clip 1 was pasted into clip 0
        if not pasted.any():
            continue
        seen += 1
        assert (pasted == pasted[:1, :1]).all()  # the same box in every channel and frame
        assert _is_box(pasted[0, 0])
        assert target[0, 1].item() == pytest.approx(pasted[0, 0].mean())  # label weight = pasted area
        assert (video[1].numpy() == 0.0).sum() == pasted.sum()  # the same box the other way
    assert seen >= 10


def test_plain_timm_cutmix_on_5d_cuts_time_instead():
    """The pitfall VideoMixup avoids: the same call on the unfolded clip slices T and H."""
    from timm.data import Mixup
    mix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=2)
    wrong = 0
    for seed in range(20):
        np.random.seed(seed)
        video, _ = mix(_two_clips(t=4, h=16, w=12), torch.tensor([0, 1]))
        pasted = video[0].numpy() == 1.0
        if pasted.any() and not (pasted == pasted[:, :1]).all():
            wrong += 1  # the box differs between frames
    assert wrong > 0


def test_mixup_blends_whole_clips():
    mix = VideoMixup(mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0, label_smoothing=0.1, num_classes=3)
    np.random.seed(0)
    video, target = mix(_two_clips(), torch.tensor([0, 2]))
    lam = 1.0 - video[0, 0, 0, 0, 0].item()
    assert torch.allclose(video[0], torch.full_like(video[0], 1 - lam))
    smooth = 0.1 / 3
    assert target[0, 0].item() == pytest.approx(lam * (1 - 0.1 + smooth) + (1 - lam) * smooth, abs=1e-5)
    with pytest.raises(ValueError, match="even batch"):
        mix(torch.zeros(3, 3, 2, 4, 4), torch.tensor([0, 1, 2]))


def _frames(t=3, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    return np.stack([base] * t)


def test_randaugment_same_ops_on_every_frame():
    ra = VideoRandAugment("rand-m9-n2-mstd0.5-inc1")
    changed = 0
    for seed in range(8):
        random.seed(seed)
        np.random.seed(seed)
        out = ra(_frames())
        assert out.shape == (3, 32, 32, 3) and out.dtype == torch.uint8
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
        changed += not torch.equal(out[0], torch.from_numpy(_frames()[0]))
    assert changed >= 4  # it does augment
    # different content in between does not change what happens to equal frames
    a, b = _frames(1, 0)[0], _frames(1, 1)[0]
    random.seed(3)
    np.random.seed(3)
    out = ra(np.stack([a, b, a]))
    assert torch.equal(out[0], out[2]) and not torch.equal(out[0], out[1])


def test_per_frame_timm_randaugment_flickers():
    """The pitfall VideoRandAugment avoids: frame-by-frame calls draw new ops per frame."""
    from PIL import Image
    differ = 0
    for seed in range(8):
        random.seed(seed)
        np.random.seed(seed)
        outs = [np.asarray(VideoRandAugment().transform(Image.fromarray(f))) for f in _frames()]
        differ += not (np.array_equal(outs[0], outs[1]) and np.array_equal(outs[1], outs[2]))
    assert differ > 0


def test_randaugment_on_normalized_clip_round_trips_identity_ops():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    u8 = torch.from_numpy(_frames()).permute(3, 0, 1, 2).float() / 255
    clip = (u8 - torch.tensor(mean)[:, None, None, None]) / torch.tensor(std)[:, None, None, None]
    out = randaugment_normalized_clip(clip, lambda f: f, mean, std)  # identity "augmentation"
    assert torch.allclose(out, clip, atol=1e-5)


def test_randaugment_posterize_to_zero_bits_gives_black_frames():
    """m10 makes PosterizeIncreasing keep 0 bits: Pillow 13 refuses that; the clip comes out black."""
    ra = VideoRandAugment("rand-m10-n1-mstd0-inc1")
    ra.transform.ops = [op for op in ra.transform.ops if op.name == "PosterizeIncreasing"]
    assert len(ra.transform.ops) == 1
    ra.transform.ops[0].prob = 1.0
    out = ra(_frames())
    assert out.shape == (3, 32, 32, 3) and not out.any()


@pytest.mark.parametrize("bits", [1, 3, 7, 8])
def test_posterize_matches_pillow_where_pillow_accepts(bits):
    from PIL import Image, ImageOps

    from sigma.evaluate.augment import posterize
    img = Image.fromarray(_frames(1)[0])
    want = img if bits == 8 else ImageOps.posterize(img, bits)
    assert np.array_equal(np.asarray(posterize(img, bits)), np.asarray(want))
