"""Files that must never be half-written, go unnoticed when damaged, or execute code when read.

- `atomic_write`: the one writer; readers see the old file or the complete new one.
- `atomic_torch_save`: `torch.save` through it, with the SHA-256 of the bytes in the file itself.
- `verify_checksum`: the check of that SHA-256 (`safe_torch_load` runs it on every file that has one).
- `safe_torch_load`: the one `torch.load` call, `weights_only=True` with one allow-list.
- `remove_stale_temps`: temporary files a killed writer left behind.
- the checkpoint format strings, one place for each.

The checksum lives in the zip comment of torch's file format: the file stays one file (one atomic
rename, hard-linkable, readable by plain `torch.load` and `zipfile`), and the hash is computed while
torch writes, so saving reads nothing back. The comment is `sigma-sha256:<hex>`, the SHA-256 of
every byte before it as torch wrote them (the end-of-directory record with its comment length 0),
so a changed byte anywhere in the file, the comment included, fails the check.
"""
import argparse
import errno
import hashlib
import os
import pickle
import re
import struct
import tempfile
from pathlib import Path

import numpy
import numpy.dtypes
import torch

PRETRAIN_FORMAT = "sigma-pretrain-v1"
FINETUNE_FORMAT = "sigma-finetune-v2"
MODELS_FORMAT = "sigma-models-v1"
LINEAR_PROBE_FORMAT = "sigma-linear-probe-v1"
FEATURES_FORMAT = "sigma-features-v1"


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


class RefusedGlobal(pickle.UnpicklingError):
    """An allow-listed numpy constructor called with arguments a plain numeric value never needs."""


def _numeric_scalar(dtype, data=None):
    """numpy's scalar reconstructor, for a numeric dtype and exactly the value's bytes: given any
    dtype and no bytes it allocates a zero-filled value of the dtype's size, which a 2 KB file can
    make gigabytes (a void dtype of 2**31 bytes)."""
    if (not isinstance(dtype, numpy.dtype) or dtype.kind not in "biufc" or dtype.subdtype is not None
            or not isinstance(data, bytes) or len(data) != dtype.itemsize):
        raise RefusedGlobal(f"numpy scalar of dtype {dtype!r} from {type(data).__name__} data: only numeric "
                            f"scalars rebuilt from their own bytes are allowed")
    return _numpy_scalar()(dtype, data)


def _numeric_dtype(*args):
    """numpy.dtype for bool, integer, float and complex types only."""
    dtype = numpy.dtype(*args)
    if dtype.kind not in "biufc" or dtype.subdtype is not None:
        raise RefusedGlobal(f"numpy dtype {dtype!r}: only numeric dtypes are allowed")
    return dtype


# The numpy names map to the checking wrappers above (torch's (callable, "module.name") form): the
# pickle still names numpy's functions, and these build the same values after checking them.
SAFE_GLOBALS = (argparse.Namespace, (_numeric_scalar, "numpy.core.multiarray.scalar"),
                (_numeric_scalar, "numpy._core.multiarray.scalar"), (_numeric_dtype, "numpy.dtype"),
                *_NUMERIC_DTYPES)

_CHECKSUM_TAG = b"sigma-sha256:"
_TRAILER_LEN = len(_CHECKSUM_TAG) + 64
_EOCD = b"PK\x05\x06"  # zip end-of-central-directory record: 22 bytes, its last 2 the comment length
_EOCD_LEN = 22
_TEMP = re.compile(r"^\..+\.[^.]+\.tmp$")  # `atomic_write`'s names: .NAME.<random>.tmp


class ChecksumError(ValueError):
    """A file whose bytes are not those it was written with (or that is empty or cut short)."""


class NoSpaceError(OSError):
    """The disk filled up while writing `path` (the previous file at `path`, if any, is intact)."""

    def __init__(self, path, detail=None):
        super().__init__(errno.ENOSPC, f"no space left on device while writing {path}"
                         + (f"; {detail}" if detail else ""))
        self.path = Path(path)

    def __str__(self):
        return self.strerror


def first_line(exc):
    """The first non-empty line of an exception's message, or its type name when it has none
    (torch raises EOFError('') for an empty file): for one-line error messages."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


# The process umask, read once: mkstemp creates its file 0600, and a written file should get the
# permissions any other new file would (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path, write, durable=True):
    """Call `write(tmp_path)` on a temporary file in `path`'s folder, fsync it, and rename it over
    `path`, so readers see either the old file or the complete new one, even after a power cut.
    The temporary file is removed if `write` fails; a full disk raises `NoSpaceError` naming `path`.
    The file gets `path`'s current permissions, or those of a new file under the umask.

    `durable=False` skips the two fsyncs: the rename still never exposes a partial file when the
    process dies, but a power cut may lose the newest files. For data that can be written again
    (a generated data set of thousands of small files, where the fsyncs cost 10× the writing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _is_enospc(exc):
            raise NoSpaceError(path) from exc
        raise
    if durable:
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


def atomic_write_text(path, text, durable=True):
    """Write `text` to `path` atomically (see `atomic_write`)."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    return atomic_write(path, write, durable=durable)


def _is_enospc(exc):
    # torch's own file writer reports a full disk as "[enforce fail ...] unexpected pos", with no errno
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _HashingWriter:
    """A binary file that hashes what goes through it (torch.save writes its zip sequentially)."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data):
        self.sha.update(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def atomic_torch_save(obj, path):
    """`torch.save(obj, path)` atomically (see `atomic_write`), with the SHA-256 of the file's
    bytes in its zip comment (module docstring), checked by `verify_checksum` / `safe_torch_load`."""
    def write(tmp):
        with open(tmp, "w+b") as f:
            w = _HashingWriter(f)
            torch.save(obj, w)
            f.flush()
            f.seek(-_EOCD_LEN, os.SEEK_END)
            eocd = f.read(_EOCD_LEN)
            if eocd[:4] != _EOCD or eocd[-2:] != b"\0\0":  # not the zip layout this relies on: no checksum
                raise RuntimeError(f"torch.save wrote an unexpected zip ending to {tmp}; cannot add a checksum")
            trailer = _CHECKSUM_TAG + w.sha.hexdigest().encode()
            f.seek(-2, os.SEEK_END)
            f.write(struct.pack("<H", len(trailer)) + trailer)
    return atomic_write(path, write)


def verify_checksum(path, chunk=1 << 24):
    """True when `path` carries a sigma checksum and its bytes match it; False when it carries none
    (an older sigma, VideoMAE, any other torch file). ChecksumError naming the file when it is empty
    or its bytes differ from those written."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ChecksumError(f"{path} is empty (0 bytes): not a checkpoint (a copy or a write that did not finish?)")
    with open(path, "rb") as f:
        f.seek(max(0, size - _EOCD_LEN - _TRAILER_LEN - 64))
        tail = f.read()
        end = tail.rfind(_EOCD)
        if end < 0 or end + _EOCD_LEN > len(tail):  # not a zip ending: torch.load decides what it is
            return False
        comment = tail[end + _EOCD_LEN:]
        if struct.unpack("<H", tail[end + _EOCD_LEN - 2:end + _EOCD_LEN])[0] != len(comment):
            raise ChecksumError(f"{path} is truncated or damaged: its zip directory does not end where the file does")
        if len(comment) != _TRAILER_LEN and not comment.startswith(_CHECKSUM_TAG):
            return False  # no comment (torch's own files), or one that is not ours
        # a comment of our length whose tag is damaged is a damaged file, not one without checksum
        sha = hashlib.sha256()
        f.seek(0)
        left = size - len(comment) - 2
        while left:
            block = f.read(min(chunk, left))
            if not block:
                break
            sha.update(block)
            left -= len(block)
        sha.update(b"\0\0")
    if comment != _CHECKSUM_TAG + sha.hexdigest().encode():
        raise ChecksumError(f"{path} is corrupt: its bytes do not match the SHA-256 recorded when it was written")
    return True


def remove_stale_temps(folder):
    """Delete the `.NAME.<random>.tmp` files a killed `atomic_write` left in `folder` (call it before
    anything writes there); returns their paths."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if _TEMP.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def safe_torch_load(path, map_location="cpu", return_verified=False):
    """`torch.load(path, weights_only=True)` with the small allow-list `SAFE_GLOBALS`.

    A file that needs anything else to unpickle (code, custom classes) is refused with an error
    naming the file and the global it asked for; nothing in it is executed. A file with a sigma
    checksum is verified first (ChecksumError when it does not match; `verify_checksum`); an empty,
    truncated or non-torch file is a one-line ValueError naming it. return_verified: return
    (object, whether a checksum was checked).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    verified = verify_checksum(path)
    obj = _torch_load(path, map_location)
    return (obj, verified) if return_verified else obj


def _torch_load(path, map_location):
    try:
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
                return torch.load(path, map_location=map_location, weights_only=True)
        torch.serialization.add_safe_globals(list(SAFE_GLOBALS))  # torch 2.4: no context manager yet
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError / RuntimeError with the offending global
        # the weights-only unpickler's own reason is the exception it wraps
        said = first_line(exc.__context__ if isinstance(exc.__context__, Exception) else exc)
        if isinstance(exc.__context__, RefusedGlobal) or isinstance(exc, RefusedGlobal):
            raise ValueError(f"refusing to load {path}: it asks for a {said}") from exc
        if "GLOBAL" not in str(exc) and "but got" not in str(exc):  # not a refusal: an unreadable file
            raise ValueError(f"cannot read {path}: truncated, damaged or not a torch file "
                             f"(torch said: {said})") from exc
        raise ValueError(f"refusing to load {path}: it is not a plain weights file readable with "
                         f"torch.load(weights_only=True) (allowed extra types: argparse.Namespace, numpy "
                         f"scalars and dtypes); {_refusal_reason(exc)}") from exc


def _refusal_reason(exc):
    """The part of torch's (long, multi-line) refusal that names what the file asked for."""
    text = str(exc)
    found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", text)
    if found:
        return f"it needs the global {found.group(1)}, which is not allowed"
    found = re.search(r"but got (<class '[^']+'>|\S+)", text)
    if found:
        return f"it builds {found.group(1)}, which is not allowed"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"torch said: {lines[-1] if lines else type(exc).__name__}"
