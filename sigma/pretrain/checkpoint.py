"""Pretraining checkpoint files: where they go, which to keep, which one `--resume auto` picks.

Layout: `DIR/checkpoints/checkpoint-<step>.pt` and `DIR/checkpoints/last.pt` (same content). A
checkpoint is a plain dict of tensors, dicts, lists and scalars (format
`sigma.engine.files.PRETRAIN_FORMAT`, documented in docs/pretraining.md), written atomically by
`sigma.engine.files` and read by `sigma.engine.checkpoints.load_checkpoint`.
"""
import os
import re
import shutil
import warnings
from pathlib import Path

from sigma.engine import checkpoints
from sigma.engine.files import PRETRAIN_FORMAT, atomic_torch_save, atomic_write

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


def checkpoint_dir(output_dir):
    return Path(output_dir) / "checkpoints"


def load_checkpoint(path, map_location="cpu"):
    """A pretraining checkpoint (`sigma.engine.checkpoints.load_checkpoint` with its format)."""
    return checkpoints.load_checkpoint(path, PRETRAIN_FORMAT, map_location=map_location)


def save_checkpoint(state, output_dir, keep=None):
    """Write `state` as checkpoint-<step>.pt and last.pt under DIR/checkpoints; keep the newest
    `keep` numbered ones (None keeps all). Returns the numbered path."""
    ckdir = checkpoint_dir(output_dir)
    path = ckdir / f"checkpoint-{int(state['step'])}.pt"
    atomic_torch_save(state, path)

    def link_or_copy(tmp):
        # A hard link costs no space; fall back to a copy where links are not supported.
        os.unlink(tmp)
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
    atomic_write(ckdir / "last.pt", link_or_copy)
    if keep is not None:
        numbered = sorted(_numbered(ckdir), reverse=True)
        for _, old in numbered[keep:]:
            old.unlink(missing_ok=True)
    return path


def _numbered(ckdir):
    out = []
    if ckdir.is_dir():
        for p in ckdir.iterdir():
            m = _NAME.match(p.name)
            if m:
                out.append((int(m.group(1)), p))
    return out


def find_resume_checkpoint(output_dir):
    """(path, state) of the newest readable checkpoint under DIR/checkpoints, or (None, None).

    Unreadable or truncated files (e.g. from a crash during a non-atomic copy) are skipped with a
    warning naming them; the next older one is tried.
    """
    ckdir = checkpoint_dir(output_dir)
    candidates = [path for _, path in sorted(_numbered(ckdir), reverse=True)] + [ckdir / "last.pt"]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            return path, load_checkpoint(path)
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, and reported
            warnings.warn(f"skipping unreadable checkpoint {path}: {type(e).__name__}: {e}", stacklevel=2)
    return None, None
