"""Video data for SIGMA: list/folder datasets with VideoMAE sampling, augmentation and tube masks
(`VideoDataset`), readers (decord, PyAV), a synthetic set (`python -m sigma.data.synthetic`) and
real sample footage (`sample_videos`). See docs/data.md."""
from .dataset import NoReadableVideoError, VideoDataset, collate_readable, read_breadcrumbs, seed_worker
from .lists import VIDEO_EXTENSIONS, VideoRecord, read_video_list
from .readers import open_video, resolve_reader
from .samples import sample_videos
from .transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize

worker_init_fn = seed_worker


def make_synthetic_dataset(out, videos=8, seed=0, **kwargs):
    """See `sigma.data.synthetic.make_synthetic_dataset` (imported lazily: it needs PyAV and Pillow)."""
    from .synthetic import make_synthetic_dataset as make
    return make(out, videos=videos, seed=seed, **kwargs)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "NoReadableVideoError", "VIDEO_EXTENSIONS", "VideoDataset", "VideoRecord",
           "collate_readable", "denormalize", "make_synthetic_dataset", "open_video", "read_breadcrumbs",
           "read_video_list", "resolve_reader",
           "sample_videos", "seed_worker", "worker_init_fn"]
