"""Fine-tuning augmentations made correct for clips: timm's Mixup/CutMix and RandAugment.

Two pitfalls of using image augmentations on video, and how they are avoided here:

- timm's `Mixup` cuts its CutMix box with `x[:, :, y0:y1, x0:x1]`, i.e. on dims 2 and 3. On a
  (B, C, T, H, W) clip those are T and H: the box would span time and rows, not rows and columns.
  `VideoMixup` folds T into the channels, (B, C·T, H, W), so the same H×W box is cut in every
  frame and channel; mixup (a blend) is unaffected by the fold.
- timm's `RandAugment` draws its ops, magnitudes and application coins from Python's `random`
  and NumPy's global generator on every call. Applied frame by frame it would augment every frame
  differently (flicker). `VideoRandAugment` snapshots both generators' states before the clip and
  restores them before each frame, so every frame sees the same draws, then leaves the generators
  advanced once, as after a single image.

And one of library versions: timm's posterize ops ask for 0 bits at the top of their magnitude
range (e.g. `PosterizeIncreasing` at magnitude 10, which m9 with mstd 0.5 draws about once in 44
applications); Pillow 13 refuses `ImageOps.posterize(img, 0)` where older Pillow returned a black
image, so long fine-tuning runs crashed. `VideoRandAugment` gives 0 bits the old meaning.
"""
import random

import numpy as np
import torch


class VideoMixup:
    """timm `Mixup` for clips: `__call__(video (B, C, T, H, W), target (B,) int64) -> (video, soft
    target (B, num_classes))`. Keyword arguments are timm's (mixup_alpha, cutmix_alpha, prob,
    switch_prob, mode, label_smoothing, num_classes, ...). The batch size must be even (timm)."""

    def __init__(self, **kwargs):
        from timm.data import Mixup

        self.mixup = Mixup(**kwargs)

    def __call__(self, video, target):
        if video.dim() != 5:
            raise ValueError(f"video: expected (B, C, T, H, W), got shape {tuple(video.shape)}")
        if video.shape[0] % 2:
            raise ValueError(f"mixup/cutmix needs an even batch size, got {video.shape[0]} "
                             "(use drop_last=True in the loader)")
        b, c, t, h, w = video.shape
        folded = video.contiguous().view(b, c * t, h, w)  # a view: timm mixes in place
        folded, target = self.mixup(folded, target)
        return folded.view(b, c, t, h, w), target


class VideoRandAugment:
    """timm RandAugment applied identically to every frame of a clip.

    config_str: timm's RandAugment string; the paper's RandAug (9, 0.5) is magnitude 9 with
    magnitude std 0.5, two ops per image: "rand-m9-n2-mstd0.5-inc1".
    `__call__(frames)` takes uint8 frames (T, H, W, C) (tensor or array) or a list of PIL images
    and returns uint8 (T, H, W, C) torch tensor.
    """

    def __init__(self, config_str="rand-m9-n2-mstd0.5-inc1", fill=(124, 116, 104), interpolation="bilinear"):
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.transforms import str_to_pil_interp

        self.config_str = config_str
        self.transform = rand_augment_transform(config_str, {"img_mean": tuple(fill),
                                                             "interpolation": str_to_pil_interp(interpolation)})
        for op in getattr(self.transform, "ops", ()):
            if op.name.startswith("Posterize"):
                op.aug_fn = posterize

    def __call__(self, frames):
        from PIL import Image

        if isinstance(frames, (list, tuple)):
            images = list(frames)
        else:
            arr = frames.numpy() if torch.is_tensor(frames) else np.asarray(frames)
            if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
                raise ValueError(f"frames: expected uint8 (T, H, W, 3), got {arr.dtype} {arr.shape}")
            images = [Image.fromarray(f) for f in arr]
        py_state, np_state = random.getstate(), np.random.get_state()
        out = []
        for img in images:
            random.setstate(py_state)
            np.random.set_state(np_state)
            out.append(np.asarray(self.transform(img), dtype=np.uint8))
        return torch.from_numpy(np.stack(out))


def posterize(img, bits_to_keep, **_):
    """Keep the `bits_to_keep` high bits of every channel of a PIL image; 0 bits gives a black
    image (what Pillow < 13 returned, and what timm's posterize levels assume)."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def randaugment_normalized_clip(video, randaug, mean, std):
    """Apply `VideoRandAugment` to a normalised float clip (C, T, H, W): back to uint8 [0, 255],
    augment, normalise again with the same mean/std (sequences of C floats)."""
    m = torch.as_tensor(mean, dtype=video.dtype)[:, None, None, None]
    s = torch.as_tensor(std, dtype=video.dtype)[:, None, None, None]
    u8 = ((video * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0)  # T, H, W, C
    aug = randaug(u8).permute(3, 0, 1, 2).to(video.dtype) / 255.0
    return (aug - m) / s
