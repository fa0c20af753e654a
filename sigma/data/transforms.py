"""Frame sampling and spatial transforms of VideoMAE-style pipelines, on uint8 (T, C, H, W) tensors.

Random choices take a `torch.Generator`, so a sample is a pure function of its generator's seed.
Resizing, cropping, flipping and normalisation go through torchvision.transforms.v2.functional;
the frame sampler and the multi-scale crop box are written here because no library has them
(torchvision's RandomResizedCrop draws area and aspect ratio, not VideoMAE's fixed scale grid).
"""
import torch

# one home for the normalisation statistics and its inverse (sigma.models.tubes, importable without timm)
from sigma.models.tubes import IMAGENET_MEAN, IMAGENET_STD
from sigma.models.tubes import unnormalize_video as denormalize  # noqa: F401  (public as sigma.data.denormalize)


def _tv_functional():
    try:
        from torchvision.transforms.v2 import functional
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("sigma.data needs torchvision (pip install 'sigma-video[video]')") from exc
    return functional


def clip_span(num_frames, sampling_rate):
    """Frames a clip covers: (T - 1)·rate + 1."""
    return (num_frames - 1) * sampling_rate + 1


def clip_indices(start, num_frames, sampling_rate, total):
    """T frame indices start, start + rate, ...; past the end they repeat the last frame."""
    idx = start + torch.arange(num_frames) * sampling_rate
    return idx.clamp_(max=total - 1).tolist()


def random_clip_start(total, num_frames, sampling_rate, generator):
    """A uniformly random start such that the clip fits (0 when the video is shorter)."""
    slack = total - clip_span(num_frames, sampling_rate)
    if slack <= 0:
        return 0
    return int(torch.randint(0, slack + 1, (1,), generator=generator))


def uniform_clip_starts(total, num_frames, sampling_rate, num_clips):
    """Evaluation starts: one centred clip, or num_clips spread evenly from the first to the last
    position where a clip fits."""
    slack = max(total - clip_span(num_frames, sampling_rate), 0)
    if num_clips == 1:
        return [slack // 2]
    return [round(slack * i / (num_clips - 1)) for i in range(num_clips)]


# Crop positions of the multi-scale crop, in quarters of the free space (x, y): the four
# corners, the centre, the four edge midpoints and the four quarter points (13 in all).
_CROP_GRID = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2),
              (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3))


def multiscale_crop_box(height, width, scales, generator):
    """VideoMAE's multi-scale crop: side lengths min(H, W)·scale for each scale, width and height
    drawn from scales at most one step apart (so the aspect ratio stays near 1), placed at one of
    13 fixed grid positions. Returns (top, left, crop_h, crop_w)."""
    base = min(height, width)
    sizes = [max(1, int(base * s)) for s in scales]
    pairs = [(h, w) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= 1]
    crop_h, crop_w = pairs[int(torch.randint(len(pairs), (1,), generator=generator))]
    gx, gy = _CROP_GRID[int(torch.randint(len(_CROP_GRID), (1,), generator=generator))]
    return (height - crop_h) * gy // 4, (width - crop_w) * gx // 4, crop_h, crop_w


def train_transform(frames, size, scales, flip, generator):
    """uint8 (T, C, H, W) → uint8 (T, C, size_h, size_w): multi-scale crop, resize, random flip."""
    F = _tv_functional()
    top, left, ch, cw = multiscale_crop_box(frames.shape[-2], frames.shape[-1], scales, generator)
    out = F.resized_crop(frames, top, left, ch, cw, list(size), antialias=True)
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        out = F.horizontal_flip(out)
    return out


def eval_crops(frames, size, num_crops):
    """uint8 (T, C, H, W) → num_crops uint8 (T, C, size_h, size_w): scale so the frame just covers
    `size` (short side to size), then crops spread evenly along the longer side (1: centre)."""
    F = _tv_functional()
    h, w = frames.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    new_h, new_w = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    resized = F.resize(frames, [new_h, new_w], antialias=True)
    crops = []
    for k in range(num_crops):
        frac = 0.5 if num_crops == 1 else k / (num_crops - 1)
        top, left = round((new_h - size[0]) * frac), round((new_w - size[1]) * frac)
        crops.append(resized[..., top:top + size[0], left:left + size[1]])
    return crops


def to_normalized_clip(frames):
    """uint8 (T, C, H, W) → float32 (C, T, H, W), ImageNet-normalised."""
    F = _tv_functional()
    video = F.normalize(frames.float().div_(255), IMAGENET_MEAN, IMAGENET_STD)
    return video.permute(1, 0, 2, 3).contiguous()

