"""Files that must never be half-written or execute code when read.

- `atomic_write`: the one writer; readers see the old file or the complete new one.
- `safe_torch_load`: the one `torch.load` call, `weights_only=True` with one allow-list.
- the checkpoint format strings, one place for each.
"""
import argparse
import os
import tempfile
from pathlib import Path

import torch

PRETRAIN_FORMAT = "sigma-pretrain-v1"
FINETUNE_FORMAT = "sigma-finetune-v2"
MODELS_FORMAT = "sigma-models-v1"
LINEAR_PROBE_FORMAT = "sigma-linear-probe-v1"

# Harmless non-tensor types found in checkpoints we are asked to read: VideoMAE/SIGMA store their
# command-line arguments as an argparse.Namespace.
SAFE_GLOBALS = (argparse.Namespace,)


def atomic_write(path, write):
    """Call `write(tmp_path)` on a temporary file in `path`'s folder, fsync it, and rename it over
    `path`, so readers see either the old file or the complete new one, even after a power cut.
    The temporary file is removed if `write` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder):
    # The rename is durable only once the folder's entry is on disk; not every OS or filesystem
    # lets a folder be opened for that, and the data is already safe there, so failures are fine.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path, text):
    """Write `text` to `path` atomically (see `atomic_write`)."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    return atomic_write(path, write)


def atomic_torch_save(obj, path):
    """`torch.save(obj, path)` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def safe_torch_load(path, map_location="cpu"):
    """`torch.load(path, weights_only=True)` with the small allow-list `SAFE_GLOBALS`.

    A file that needs anything else to unpickle (code, custom classes) is refused with an error
    naming the file; nothing in it is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
                return torch.load(path, map_location=map_location, weights_only=True)
        torch.serialization.add_safe_globals(list(SAFE_GLOBALS))  # torch 2.4: no context manager yet
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError / RuntimeError with the offending global
        raise ValueError(f"refusing to load {path}: it is not a plain weights file readable with "
                         f"torch.load(weights_only=True) (allowed extra types: argparse.Namespace). "
                         f"torch said: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
