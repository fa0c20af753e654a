"""VideoDataset: decoded, augmented, normalised clips with their tube masks and labels."""
import logging
import os

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..engine.seeding import (
    sample_generator,
    seed_worker,  # noqa: F401 - the DataLoader worker_init_fn, re-exported
)
from ..masking import tube_mask
from . import transforms as T
from .lists import VideoRecord, read_video_list
from .readers import open_video, resolve_reader

UNREADABLE = ("next", "skip")


class NoReadableVideoError(ValueError, RuntimeError):
    """Every video of a dataset failed to decode (each was skipped with a warning naming it).

    A ValueError (bad input, what the command lines report as one line) and a RuntimeError.
    """

    def __init__(self, message):
        # A DataLoader worker's exception reaches the main process as ExceptionWrapper.reraise
        # builds it: this class called with "Caught ... in DataLoader worker ...\nOriginal Traceback
        # ...", whose last line is "<module>.NoReadableVideoError: <message>". Keep the message only,
        # so the command lines print one line, not the worker's traceback.
        if message.startswith("Caught NoReadableVideoError"):
            last = message.rstrip().splitlines()[-1]
            message = last.partition(f"{type(self).__name__}: ")[2] or last
        super().__init__(message)


def collate_readable(batch):
    """DataLoader `collate_fn` for `VideoDataset(unreadable="skip")`: drops the None samples of
    unreadable files and collates the rest (`default_collate`); None when none is left."""
    batch = [s for s in batch if s is not None]
    return default_collate(batch) if batch else None


logger = logging.getLogger(__name__)

BREADCRUMB_ENV = "SIGMA_DATA_BREADCRUMBS"


def _pair(value, name):
    if isinstance(value, int):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    return value


class VideoDataset(Dataset):
    """Clips of a list file or folder of videos, VideoMAE-style.

    source: a list file (`path label [label ...]` per line, see `read_video_list`), a folder, or a
    sequence of `VideoRecord`. Train mode (`train=True`): one clip of `num_frames` frames every
    `sampling_rate` frames at a random position, multi-scale crop (`scales` of the short side,
    VideoMAE's grid), resize to `size`, random horizontal flip (`flip=False` for SSv2). Eval mode:
    `num_clips` clips spread evenly over the video (one: centred), short side resized to `size`,
    `num_crops` crops along the long side (one: centred).

    `dataset[i]` is a dict:
      video  float32 (C, T, H, W), ImageNet-normalised; (V, C, T, H, W) with V = num_clips·num_crops
             in eval mode when V > 1 (clip-major: all crops of clip 0, then clip 1, ...);
      mask   bool (N,) with N = (T/pt)·(H/ph)·(W/pw), True = masked, exactly (T/pt)·int(ratio·(H/ph)·(W/pw))
             True (tube masking, `sigma.masking.tube_mask`); (V, N) for multi-view; only when mask_ratio is set;
      label  int64 (num_labels,), -1 when unlabelled;
      index  int, the record actually used (the next readable one when a file was skipped).

    Randomness: every draw (clip position, crop, flip when enabled, mask, in that order) comes from one
    torch.Generator seeded from (seed, draw, index), where draw is the epoch set by `set_epoch`
    (or given explicitly: `dataset[(index, draw)]`). A sample is therefore the same whichever
    worker makes it and in whatever order, and a resumed run that replays the sampler's order
    gets the same clips and masks. With `persistent_workers=True` the workers keep the epoch
    they were started with: pass `(index, epoch)` keys from the sampler instead of `set_epoch`.

    Unreadable files: the first failure logs one warning naming the file and marks it bad in a
    shared table (workers see each other's marks, so no file is retried or re-reported). Then,
    with `unreadable="next"` (training: every batch stays full), the next readable record is
    used instead, and after every record has failed, `NoReadableVideoError`; with
    `unreadable="skip"` (evaluation: no clip is scored twice), `dataset[i]` is None, which
    `collate_readable` drops from the batch. `num_skipped` counts the files marked bad so far,
    across workers, `skipped_files` names them; `check_readable()` opens every file up front.

    Crashes inside the decoder: a log record "reading <path>" at DEBUG level precedes every
    decode, and when `breadcrumb_dir` (or the environment variable SIGMA_DATA_BREADCRUMBS) is
    set, each process writes the path it is about to decode to `<dir>/reading-<pid>.txt`, so a
    segfault in decord/FFmpeg that takes the process down leaves the file's name behind
    (`read_breadcrumbs(dir)`).
    """

    def __init__(self, source, *, root=None, num_frames=16, sampling_rate=4, size=224,
                 scales=(1, .875, .75, .66), flip=True, train=True, mask_ratio=0.9,
                 tube_size=(2, 16, 16), num_clips=1, num_crops=1, reader="auto", seed=0,
                 breadcrumb_dir=None, unreadable="next"):
        if isinstance(source, (str, os.PathLike)):
            self.source = os.fspath(source)
            records = read_video_list(source, root=root)
        else:
            self.source = "<records>"
            records = [r if isinstance(r, VideoRecord) else VideoRecord(os.fspath(r), (-1,)) for r in source]
            if not records:
                raise ValueError("source is an empty sequence of videos")
        self.records = records
        for name, v in (("num_frames", num_frames), ("sampling_rate", sampling_rate),
                        ("num_clips", num_clips), ("num_crops", num_crops)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.size = _pair(size, "size")
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or not all(0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be non-empty fractions in (0, 1], got {scales!r}")
        if train and num_clips * num_crops > 1:
            raise ValueError("num_clips and num_crops > 1 are for eval mode (train=False); "
                             f"got num_clips={num_clips}, num_crops={num_crops} with train=True")
        self.num_frames, self.sampling_rate = num_frames, sampling_rate
        self.flip, self.train = bool(flip), bool(train)
        self.num_clips, self.num_crops = num_clips, num_crops
        self.tube_size = tuple(int(v) for v in tube_size)
        self.mask_ratio = mask_ratio
        if mask_ratio is not None:
            pt, ph, pw = self.tube_size
            if num_frames % pt or self.size[0] % ph or self.size[1] % pw:
                raise ValueError(f"num_frames={num_frames} and size={self.size} must be divisible by "
                                 f"tube_size={self.tube_size} for masking")
            self.grid = (num_frames // pt, self.size[0] // ph, self.size[1] // pw)
            # validates mask_ratio now, not in a worker; its own generator leaves the global stream
            # alone, so a model built after the dataset gets the same weights as one built without it
            tube_mask(1, self.grid, mask_ratio, generator=torch.Generator().manual_seed(0))
        else:
            self.grid = None
        self.reader = resolve_reader(reader)
        if unreadable not in UNREADABLE:
            raise ValueError(f"unreadable must be one of {UNREADABLE}, got {unreadable!r}")
        self.unreadable = unreadable
        self.seed = int(seed)
        self.epoch = 0
        self.breadcrumb_dir = breadcrumb_dir if breadcrumb_dir is not None else os.environ.get(BREADCRUMB_ENV)
        if self.breadcrumb_dir:
            os.makedirs(self.breadcrumb_dir, exist_ok=True)
        # Shared memory: workers (fork or spawn) mark bad files in the same table.
        self._bad = torch.zeros(len(records), dtype=torch.bool).share_memory_()

    def __len__(self):
        return len(self.records)

    def set_epoch(self, epoch):
        """The draw counter mixed into every sample's seed (call before each epoch's iterator)."""
        self.epoch = int(epoch)

    @property
    def num_skipped(self):
        """Unreadable files met so far (all workers)."""
        return int(self._bad.sum())

    @property
    def skipped_files(self):
        return [self.records[i].path for i in self._bad.nonzero().flatten().tolist()]

    def generator(self, index, draw):
        """The torch.Generator of sample `index` at draw `draw` (`sigma.engine.seeding`)."""
        return sample_generator(self.seed, draw, index)

    def __getitem__(self, key):
        index, draw = key if isinstance(key, tuple) else (key, self.epoch)
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} videos")
        index %= n
        for attempt in range(n if self.unreadable == "next" else 1):
            i = (index + attempt) % n
            if self._bad[i]:
                continue
            g = self.generator(i, draw)
            try:
                frames = self._decode(self.records[i].path, g)
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - decoders raise many types (DECORDError, av.error.*, OSError)
                self._mark_bad(i, exc)
                continue
            return self._make_sample(frames, i, g)
        if self.unreadable == "skip":
            return None
        raise self.no_readable_error()

    def _mark_bad(self, i, exc):
        if not self._bad[i]:
            self._bad[i] = True
            logger.warning("skipping unreadable video %s (%s: %s); %d skipped so far",
                           self.records[i].path, type(exc).__name__, exc, self.num_skipped)

    def no_readable_error(self):
        """The NoReadableVideoError of this dataset: how many files failed, with which reader."""
        n, bad = len(self.records), self.skipped_files
        first = bad[0] if bad else self.records[0].path
        return NoReadableVideoError(
            f"no readable video in {self.source!r}: {len(bad)} of {n} file(s) could not be read with reader "
            f"{self.reader!r} (first: {first!r}); see the warnings above")

    def check_readable(self):
        """Open every not-yet-bad file (container and frame count, no frames decoded), marking and
        reporting the unreadable ones as `dataset[i]` would. Returns the number of readable files;
        NoReadableVideoError when there is none. Costs one open per file: for short lists."""
        for i, record in enumerate(self.records):
            if self._bad[i]:
                continue
            try:
                open_video(record.path, self.reader).close()
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - decoders raise many types
                self._mark_bad(i, exc)
        readable = len(self.records) - self.num_skipped
        if readable == 0:
            raise self.no_readable_error()
        return readable

    def _decode(self, path, g):
        """uint8 (num_clips, T, C, H, W) frames of the sampled clip(s)."""
        logger.debug("reading %s", path)
        if self.breadcrumb_dir:
            with open(os.path.join(self.breadcrumb_dir, f"reading-{os.getpid()}.txt"), "w") as f:
                f.write(path + "\n")
        video = open_video(path, self.reader)
        try:
            total = video.num_frames
            if self.train:
                starts = [T.random_clip_start(total, self.num_frames, self.sampling_rate, g)]
            else:
                starts = T.uniform_clip_starts(total, self.num_frames, self.sampling_rate, self.num_clips)
            indices = [i for s in starts for i in T.clip_indices(s, self.num_frames, self.sampling_rate, total)]
            frames = video.get_frames(indices)
        finally:
            video.close()
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] != len(indices):
            raise ValueError(f"decoder returned frames of shape {frames.shape}, expected ({len(indices)}, H, W, 3)")
        frames = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        return frames.reshape(len(starts), self.num_frames, *frames.shape[1:])

    def _make_sample(self, frames, index, g):
        if self.train:
            views = [T.train_transform(frames[0], self.size, self.scales, self.flip, g)]
        else:
            views = [crop for clip in frames for crop in T.eval_crops(clip, self.size, self.num_crops)]
        videos = [T.to_normalized_clip(v) for v in views]
        sample = {"video": videos[0] if len(videos) == 1 else torch.stack(videos)}
        if self.mask_ratio is not None:
            mask = tube_mask(len(videos), self.grid, self.mask_ratio, generator=g)
            sample["mask"] = mask[0] if len(videos) == 1 else mask
        sample["label"] = torch.tensor(self.records[index].labels, dtype=torch.int64)
        sample["index"] = index
        return sample

    def __repr__(self):
        mode = "train" if self.train else f"eval, {self.num_clips} clips × {self.num_crops} crops"
        return (f"VideoDataset({self.source!r}, {len(self)} videos, {self.num_frames} frames every "
                f"{self.sampling_rate} at {self.size[0]}×{self.size[1]}, {mode}, mask_ratio={self.mask_ratio}, "
                f"reader={self.reader!r})")


def read_breadcrumbs(directory):
    """{pid: path} of the last file each process started decoding (see VideoDataset)."""
    out = {}
    if not os.path.isdir(directory):
        return out
    for name in sorted(os.listdir(directory)):
        if name.startswith("reading-") and name.endswith(".txt"):
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                out[int(name[len("reading-"):-4])] = f.read().strip()
    return out
