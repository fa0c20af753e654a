"""Files that must never be half-written or execute code when read.

- `atomic_write`: the one writer; readers see the old file or the complete new one.
- `safe_torch_load`: the one `torch.load` call, `weights_only=True` with one allow-list.
- the checkpoint format strings, one place for each.
"""
import argparse
import os
import re
import tempfile
from pathlib import Path

import numpy
import numpy.dtypes
import torch

PRETRAIN_FORMAT = "sigma-pretrain-v1"
FINETUNE_FORMAT = "sigma-finetune-v2"
MODELS_FORMAT = "sigma-models-v1"


def _numpy_scalar():
    # numpy 2 moved numpy.core to numpy._core; the function is the same object under either name.
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


# Harmless non-tensor types found in checkpoints we are asked to read. VideoMAE/SIGMA store their
# command-line arguments as an argparse.Namespace, and their numpy lr / weight-decay schedules leave
# numpy.float64 values in the optimizer's param_groups: those unpickle through numpy's `scalar`
# (a dtype and the value's raw bytes; numpy 1.x files name it numpy.core.multiarray.scalar, numpy 2
# files numpy._core.multiarray.scalar) and `numpy.dtype` with its numeric dtype classes. All of
# them rebuild plain values from bytes: data, not code. Object, string and void dtypes are not
# allowed (arrays of Python objects would need numpy's array reconstructor, which is not either).
_NUMERIC_DTYPES = tuple(getattr(numpy.dtypes, name) for name in (
    "BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType", "UInt16DType", "UInt32DType",
    "UInt64DType", "Float16DType", "Float32DType", "Float64DType", "LongDoubleDType", "Complex64DType",
    "Complex128DType", "CLongDoubleDType", "ByteDType", "UByteDType", "ShortDType", "UShortDType", "IntDType",
    "UIntDType", "LongDType", "ULongDType", "LongLongDType", "ULongLongDType") if hasattr(numpy.dtypes, name))
SAFE_GLOBALS = (argparse.Namespace, _numpy_scalar(), (_numpy_scalar(), "numpy.core.multiarray.scalar"),
                (_numpy_scalar(), "numpy._core.multiarray.scalar"), numpy.dtype, *_NUMERIC_DTYPES)


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
    naming the file and the global it asked for; nothing in it is executed.
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
                         f"torch.load(weights_only=True) (allowed extra types: argparse.Namespace, numpy "
                         f"scalars and dtypes); {_refusal_reason(exc)}") from exc


def _refusal_reason(exc):
    """The part of torch's (long, multi-line) refusal that names what the file asked for."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it needs the global {found.group(1)}, which is not allowed"
    found = re.search(r"but got (<class '[^']+'>|\S+)", text)
    if found:
        return f"it builds {found.group(1)}, which is not allowed"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"torch said: {lines[-1] if lines else type(exc).__name__}"
