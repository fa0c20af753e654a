"""Frozen-encoder probes on labelled video lists: `knn` and `linear` (tasks of `python -m sigma.evaluate`).

Both extract one pooled feature per clip — the mean of all tokens after the encoder's final
norm (`VideoViTEncoder.forward_pooled`) — from the train and val lists in eval mode (centred
clip(s), centred crop(s), no augmentation), then score the val list. `linear` with
pooling="attentive" keeps the tokens (N, L, C) and trains an attentive probe on them instead.
"""
import time
from pathlib import Path

import torch

from sigma.engine.amp import amp_dtype
from sigma.engine.config import defaults_from
from sigma.engine.distributed import pick_device
from sigma.engine.files import LINEAR_PROBE_FORMAT, atomic_torch_save
from sigma.engine.provenance import provenance

from .common import (
    encoder_input_size,
    extract_pooled_features,
    labelled_splits,
    load_encoder,
    non_finite_parameters,
    write_json,
)
from .config import KnnConfig, LinearConfig
from .metrics import (
    check_knn_settings,
    classification_metrics,
    knn_evaluate,
    linear_probe_scores,
    non_finite_rows,
    train_linear_probe,
)


def _features(checkpoint, data, train_list, val_list, label_column, classes, sampling_rate, num_clips, num_crops,
              batch_size, num_workers, device, amp, progress, features_cache=None, tokens=False):
    from sigma.data import VideoDataset

    train_path, val_path, _, _, num_classes = labelled_splits(
        data, train_list, val_list, label_column, classes)
    device = pick_device(device)
    encoder = load_encoder(checkpoint)
    num_frames, size, tube = encoder_input_size(encoder)
    out, skipped = {}, []
    for split, path in (("train", train_path), ("val", val_path)):
        # unreadable="skip": an unreadable clip is left out and counted, never replaced by another
        # clip (which would score that one twice)
        ds = VideoDataset(path, num_frames=num_frames, sampling_rate=sampling_rate, size=size, train=False,
                          mask_ratio=None, tube_size=tube, num_clips=num_clips, num_crops=num_crops,
                          unreadable="skip")

        def extract(ds=ds):
            feats, labels = extract_pooled_features(
                encoder, ds, batch_size=batch_size, num_workers=num_workers, device=device,
                amp_dtype=amp_dtype(amp, device), label_column=None, progress=progress, tokens=tokens)
            return feats, labels, list(ds.skipped_files)

        if features_cache is None:
            feats, labels, split_skipped = extract()
        else:
            key = _cache_key(checkpoint, path, sampling_rate=sampling_rate, views=[num_clips, num_crops],
                             batch_size=batch_size, device=device.type, amp=str(amp_dtype(amp, device)),
                             feature="tokens" if tokens else "pooled")
            feats, labels, split_skipped = _cached_features(Path(features_cache), key, extract)
        out[split] = (feats, labels[:, label_column])
        _check_finite_features(out[split][0].flatten(1), split, checkpoint, encoder)
        skipped += split_skipped
    info = {"checkpoint": str(checkpoint), "train_list": str(train_path), "val_list": str(val_path),
            "label_column": label_column, "num_classes": num_classes, "num_train": len(out["train"][1]),
            "num_val": len(out["val"][1]), "num_frames": num_frames, "img_size": list(size),
            "sampling_rate": sampling_rate, "views": [num_clips, num_crops],
            "feature": ("all tokens after the encoder's final norm (forward_features)" if tokens else
                        "mean of all tokens after the encoder's final norm (forward_pooled)"),
            "num_skipped": len(skipped), "skipped_files": skipped}
    return out["train"], out["val"], num_classes, device, info


def _file_digest(path):
    """SHA-256 of a file, or of a folder's files (names and bytes, sorted): what the features depend on."""
    import hashlib
    path = Path(path)
    sha = hashlib.sha256()
    for f in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
        sha.update(f.relative_to(path).as_posix().encode() if f != path else b"")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                sha.update(block)
    return sha.hexdigest()


def _videos_digest(list_path):
    """SHA-256 over every listed video's resolved path, size and modification time: a regenerated
    or repaired video changes the key without hashing gigabytes of video bytes."""
    import hashlib
    import os

    from sigma.data import read_video_list
    sha = hashlib.sha256()
    for r in read_video_list(list_path):
        try:
            st = os.stat(r.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        sha.update(f"{os.path.abspath(r.path)}\0{stamp}\n".encode())
    return sha.hexdigest()


def _cache_key(checkpoint, list_path, **settings):
    """What a cached feature file was extracted from: the checkpoint's bytes, the list (its path,
    since entries are relative to it, and its bytes), the listed videos (path, size, mtime) and
    every setting that changes the numbers."""
    return {"checkpoint": _file_digest(checkpoint), "list": str(Path(list_path).resolve()),
            "list_sha256": _file_digest(list_path), "videos_sha256": _videos_digest(list_path), **settings}


def _cached_features(folder, key, extract):
    """(features, labels of every column, skipped files) from FOLDER's file for `key` when one was
    written for exactly that key; else `extract()`, written there atomically. The file name is a
    digest of the key, and the key is stored and compared in full: a stale or foreign file is never
    used. An unreadable cache file is extracted again (and replaced)."""
    import hashlib
    import json
    import warnings

    from sigma.engine.files import FEATURES_FORMAT, safe_torch_load

    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = folder / f"features-{key['feature']}-{name}.pt"
    if path.exists():
        try:
            saved = safe_torch_load(path)
            if isinstance(saved, dict) and saved.get("format") == FEATURES_FORMAT and saved.get("key") == key:
                feats, labels, skipped = saved["features"], saved["labels"], list(saved["skipped_files"])
                if torch.is_tensor(feats) and torch.is_tensor(labels) and len(feats) == len(labels):
                    if skipped:
                        warnings.warn(f"{len(skipped)} unreadable clip(s) left out (from the features cache "
                                      f"{path}): {', '.join(map(str, skipped[:5]))}", stacklevel=3)
                    return feats, labels, skipped
            warnings.warn(f"features cache {path} holds something else; extracting again", stacklevel=3)
        except (ValueError, OSError, KeyError, TypeError) as exc:  # ChecksumError is a ValueError
            warnings.warn(f"features cache {path} is unreadable ({exc}); extracting again", stacklevel=3)
    feats, labels, skipped = extract()
    try:
        atomic_torch_save({"format": FEATURES_FORMAT, "key": key, "features": feats, "labels": labels,
                           "skipped_files": skipped}, path)
    except OSError as exc:  # the features are good: a cache that cannot be written costs only time
        warnings.warn(f"could not write the features cache {path} ({exc}); continuing without it", stacklevel=3)
    return feats, labels, skipped


def _check_finite_features(feats, split, checkpoint, encoder):
    """A clear error when features (N, C) hold NaN or inf, saying whether the weights are the cause."""
    bad = non_finite_rows(feats)
    if not len(bad):
        return
    weights = non_finite_parameters(encoder)
    cause = (f"{len(weights)} of its parameter tensors are not finite (first: {weights[0]})" if weights
             else "its weights are finite: check the input clips")
    raise ValueError(f"--checkpoint {str(checkpoint)!r}: the encoder gives non-finite features (NaN or inf) for "
                     f"{len(bad)} of {len(feats)} {split} clips; {cause}")


@defaults_from(KnnConfig)
def knn(checkpoint, data, output_dir, *, train_list, val_list, label_column, classes, k,
        temperature, weighted, sampling_rate, num_clips, num_crops, batch_size, num_workers, device, amp, progress,
        features_cache):
    """k-NN classification of the val list by the train list's pooled features (cosine, k neighbours,
    votes weighted by exp(sim / temperature) unless weighted=False). Returns (and writes to
    OUTPUT_DIR/knn.json) top1, top5, mean_class_accuracy in %, with the settings used."""
    t0 = time.time()
    check_knn_settings(k, temperature, weighted)  # before the minutes of feature extraction
    (xtr, ytr), (xva, yva), num_classes, _, info = _features(
            checkpoint, data, train_list, val_list, label_column, classes, sampling_rate, num_clips, num_crops,
            batch_size, num_workers, device, amp, progress, features_cache)
    result = {"task": "knn", **knn_evaluate(xtr, ytr, xva, yva, num_classes, k=k, temperature=temperature,
                                            weighted=weighted), **info}
    result.update(seconds=time.time() - t0, provenance=provenance())
    if output_dir is not None:
        write_json(Path(output_dir) / "knn.json", result)
    return result


@defaults_from(LinearConfig)
def linear(checkpoint, data, output_dir, *, train_list, val_list, label_column, classes,
           pooling, heads, epochs, lr, weight_decay, probe_batch_size, seed, sampling_rate, num_clips, num_crops,
           batch_size, num_workers, device, amp, progress, features_cache):
    """Linear probe on frozen pooled features: standardise with the train features' statistics, fit a
    linear layer with AdamW + cosine decay (`train_linear_probe`), score the val list. Returns (and
    writes to OUTPUT_DIR/linear.json) top1, top5, mean_class_accuracy in %; the probe goes to
    OUTPUT_DIR/linear_probe.pt ({"state_dict", "num_classes", "dim", "checkpoint"})."""
    t0 = time.time()
    (xtr, ytr), (xva, yva), num_classes, dev, info = _features(
        checkpoint, data, train_list, val_list, label_column, classes, sampling_rate, num_clips, num_crops,
        batch_size, num_workers, device, amp, progress, features_cache, tokens=pooling == "attentive")
    probe, history = train_linear_probe(xtr, ytr, num_classes, epochs=epochs, batch_size=probe_batch_size, lr=lr,
                                        weight_decay=weight_decay, seed=seed, device=dev, pooling=pooling,
                                        heads=heads)
    result = {"task": "linear", **classification_metrics(linear_probe_scores(probe, xva), yva, num_classes),
              "train": classification_metrics(linear_probe_scores(probe, xtr), ytr, num_classes), **info,
              "pooling": pooling, "heads": heads if pooling == "attentive" else None, "epochs": epochs, "lr": lr,
              "weight_decay": weight_decay, "probe_batch_size": probe_batch_size,
              "seed": seed, "final_train_loss": history["loss"][-1] if history["loss"] else None}
    result.update(seconds=time.time() - t0, provenance=provenance())
    if output_dir is not None:
        out = Path(output_dir)
        state = {k: v.cpu() for k, v in probe.state_dict().items()}
        atomic_torch_save({"format": LINEAR_PROBE_FORMAT, "state_dict": state, "num_classes": num_classes,
                           "dim": int(xtr.shape[-1]), "pooling": pooling, "checkpoint": str(checkpoint)},
                          out / "linear_probe.pt")
        result["probe_checkpoint"] = str(out / "linear_probe.pt")
        write_json(out / "linear.json", result)
    return result


__all__ = ["knn", "linear"]
