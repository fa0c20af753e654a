"""Shared plumbing of the evaluation tasks: checkpoints, devices, labelled lists, features, results."""
import json
import math
from pathlib import Path

import numpy as np
import torch

from sigma.engine.files import atomic_write_text


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf; a missing number is null
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return _json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _json_safe(obj.item())
    return obj


def write_json(path, obj):
    """Write obj as JSON atomically (`sigma.engine.files`); NaN/inf become null."""
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=1, allow_nan=False) + "\n")
    return Path(path)


def load_encoder(checkpoint, **overrides):
    """The video encoder stored in `checkpoint` (any format `sigma.models.load_encoder` reads: our
    safetensors export, a pretraining checkpoint, an original VideoMAE .pth), as a
    VideoViTEncoder in eval mode. A file that holds no such encoder is a ValueError naming it."""
    from sigma.models import load_encoder as _load

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {str(path)!r} does not exist")
    try:
        encoder = _load(str(path), **overrides)
    except ImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - mismatches surface as RuntimeError/KeyError/ValueError/OSError
        raise ValueError(f"--checkpoint {str(path)!r}: no video encoder of a known architecture could be built "
                         f"from it ({type(exc).__name__}: {exc})") from exc
    return encoder.eval()


def non_finite_parameters(encoder):
    """Names of the encoder's parameter tensors holding NaN or inf (one host sync per tensor: call
    once per task, not per batch)."""
    return [name for name, p in encoder.named_parameters() if not bool(torch.isfinite(p).all())]


def require_finite_weights(encoder, checkpoint, task):
    """A clear error naming --checkpoint when its weights hold NaN or inf: `task` (k-means
    clustering) would otherwise fail deep inside a library on the features."""
    bad = non_finite_parameters(encoder)
    if bad:
        raise ValueError(f"--checkpoint {str(checkpoint)!r}: {len(bad)} of its parameter tensors are not finite "
                         f"(first: {bad[0]}); {task} needs finite features")


def encoder_input_size(encoder):
    """(num_frames, img_size (H, W), tube_size) the encoder was built for."""
    cfg = encoder.config
    return cfg.num_frames, tuple(cfg.img_size), tuple(cfg.tube_size)


def num_classes_of(list_path, label_column=0, classes=None):
    """Class count of label column `label_column`: from `classes` (a JSON file mapping column names
    to class-name lists, like the synthetic set's classes.json) or the classes.json next to the
    list; None when there is none (then the caller uses the largest training label + 1)."""
    path = Path(classes) if classes else Path(list_path).parent / "classes.json"
    if not path.is_file():
        if classes:
            raise FileNotFoundError(f"--classes {str(path)!r} does not exist")
        return None
    with open(path, encoding="utf-8") as f:
        names = json.load(f)
    columns = list(names.values()) if isinstance(names, dict) else [names]
    if not 0 <= label_column < len(columns):
        raise ValueError(f"label_column {label_column} is out of range: {path} describes {len(columns)} label "
                         f"column(s)")
    return len(columns[label_column])


def check_list_labels(records, list_path, label_column, num_classes):
    """Raise a clear error for unlabelled records, a missing label column, or labels outside
    [0, num_classes)."""
    for r in records:
        if len(r.labels) <= label_column:
            raise ValueError(f"{list_path}: {r.path} has {len(r.labels)} label(s), label_column={label_column} "
                             "asks for more")
        y = r.labels[label_column]
        if y < 0:
            raise ValueError(f"{list_path}: {r.path} is unlabelled (label {y}); k-NN, linear probing and "
                             "fine-tuning need a labelled list (`path label` per line)")
        if num_classes is not None and y >= num_classes:
            raise ValueError(f"{list_path}: {r.path} has label {y}, unknown: the task has {num_classes} classes "
                             f"(0..{num_classes - 1})")


def resolve_split_lists(data, train_list=None, val_list=None):
    """(train list, val list) paths: explicit ones (relative to `data` when it is a folder) or
    DATA/train.txt and DATA/val.txt; `data` may be None when both lists are given."""
    if data is None:
        if not (train_list and val_list):
            raise FileNotFoundError("no data: pass --data DIR holding train.txt/val.txt, or both --train-list "
                                    "and --val-list")
        data = Path(train_list).parent
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data {str(data)!r} does not exist (a folder holding train.txt/val.txt, "
                                "or a list file)")
    base = data if data.is_dir() else data.parent
    out = []
    for given, default in ((train_list, "train.txt"), (val_list, "val.txt")):
        p = Path(given) if given else base / default
        if given and not p.is_absolute() and not p.exists():
            p = base / given
        if not p.exists():
            raise FileNotFoundError(f"list {str(p)!r} does not exist (pass --data DIR holding train.txt/val.txt, "
                                    "or --train-list/--val-list)")
        out.append(p)
    return tuple(out)


def labelled_splits(data, train_list=None, val_list=None, label_column=0, classes=None):
    """The train/val lists of a labelled task, read and checked: (train_path, val_path,
    train_records, val_records, num_classes)."""
    from sigma.data import read_video_list

    train_path, val_path = resolve_split_lists(data, train_list, val_list)
    train_records, val_records = read_video_list(train_path), read_video_list(val_path)
    num_classes = num_classes_of(train_path, label_column, classes)
    check_list_labels(train_records, train_path, label_column, num_classes)
    if num_classes is None:
        num_classes = 1 + max(r.labels[label_column] for r in train_records)
    check_list_labels(val_records, val_path, label_column, num_classes)
    return train_path, val_path, train_records, val_records, num_classes


def stratified_subset(records, label_column, fraction, seed):
    """The records of a class-stratified random subset: of each class's n clips, max(1, round(fraction
    * n)) drawn without replacement by a NumPy generator seeded with `seed`; the subset keeps the
    list's order. fraction in (0, 1]; 1 returns the list unchanged."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return list(records)
    by_class = {}
    for i, r in enumerate(records):
        by_class.setdefault(r.labels[label_column], []).append(i)
    rng = np.random.default_rng(seed)
    keep = set()
    for label in sorted(by_class):
        idx = by_class[label]
        keep.update(rng.choice(idx, size=max(1, round(fraction * len(idx))), replace=False).tolist())
    return [r for i, r in enumerate(records) if i in keep]


@torch.no_grad()
def extract_pooled_features(encoder, dataset, *, batch_size=8, num_workers=0, device="cpu", amp_dtype=None,
                            label_column=0, progress=True, tokens=False):
    """Pooled clip features of every sample of `dataset` (a `sigma.data.VideoDataset` in eval mode):
    (features (N, C) float32, labels (N,) int64, or (N, L) every label column when label_column is
    None); multi-view samples average their views' features.
    With `unreadable="skip"` the unreadable clips are left out (N counts the clips read); none
    read is `NoReadableVideoError`.

    The feature is `encoder.forward_pooled`: the mean of all tokens after the encoder's final norm;
    with tokens=True, the tokens themselves (N, L, C) float32 (`forward_features`).
    """
    from torch.utils.data import DataLoader

    from sigma.data import collate_readable

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", collate_fn=collate_readable)
    feats, labels = [], []
    it = loader
    if progress:
        from tqdm import tqdm
        it = tqdm(loader, desc="features", leave=False, dynamic_ncols=True)
    encoder = encoder.to(device).eval()
    for batch in it:
        if batch is None:  # every clip of the batch was unreadable
            continue
        video = batch["video"].to(device, non_blocking=True)
        views = 1
        if video.dim() == 6:  # (B, V, C, T, H, W)
            views = video.shape[1]
            video = video.flatten(0, 1)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            f = (encoder.forward_features(video) if tokens else encoder.forward_pooled(video)).float()
        feats.append(f.view(-1, views, *f.shape[1:]).mean(1).cpu())
        labels.append(batch["label"] if label_column is None else batch["label"][:, label_column])
    if not feats:
        raise dataset.no_readable_error()
    return torch.cat(feats), torch.cat(labels)
