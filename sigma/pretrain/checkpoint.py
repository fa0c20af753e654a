"""Pretraining checkpoint files: where they go, which to keep, which one `--resume auto` picks.

Layout: `DIR/checkpoints/checkpoint-<step>.pt` and `DIR/checkpoints/last.pt` (same content). A
checkpoint is a plain dict of tensors, dicts, lists and scalars (format
`sigma.engine.files.PRETRAIN_FORMAT`, documented in docs/pretraining.md), written atomically by
`sigma.engine.files` (with its SHA-256) and read by `sigma.engine.checkpoints.load_checkpoint`
(which verifies it). `--resume auto` takes the newest checkpoint that is intact and finite.
"""
import os
import re
import shutil
import warnings
from pathlib import Path

from sigma.engine import checkpoints
from sigma.engine.files import (
    PRETRAIN_FORMAT,
    NoSpaceError,
    atomic_torch_save,
    atomic_write,
    first_line,
    remove_stale_temps,
)

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


def checkpoint_dir(output_dir):
    return Path(output_dir) / "checkpoints"


def load_checkpoint(path, map_location="cpu"):
    """A pretraining checkpoint (`sigma.engine.checkpoints.load_checkpoint` with its format)."""
    return checkpoints.load_checkpoint(path, PRETRAIN_FORMAT, map_location=map_location)


def save_checkpoint(state, output_dir, keep=None):
    """Write `state` as checkpoint-<step>.pt and last.pt under DIR/checkpoints; keep the newest
    `keep` numbered ones (None keeps all). Returns the numbered path. A full disk raises
    `NoSpaceError` saying which checkpoint is still the newest intact one."""
    ckdir = checkpoint_dir(output_dir)
    path = ckdir / f"checkpoint-{int(state['step'])}.pt"
    try:
        _write(state, path, ckdir)
    except NoSpaceError as e:
        newest = newest_checkpoint(output_dir)
        intact = (f"the previous checkpoint, step {newest[0]} ({newest[1].name}), is intact" if newest
                  else "no earlier checkpoint exists")
        raise NoSpaceError(e.path, detail=intact) from e.__cause__
    if keep is not None:
        numbered = sorted(_numbered(ckdir), reverse=True)
        for _, old in numbered[keep:]:
            old.unlink(missing_ok=True)
    return path


def _write(state, path, ckdir):
    atomic_torch_save(state, path)

    def link_or_copy(tmp):
        # A hard link costs no space; fall back to a copy where links are not supported.
        os.unlink(tmp)
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
    atomic_write(ckdir / "last.pt", link_or_copy)


def newest_checkpoint(output_dir):
    """(step, path) of the newest numbered checkpoint file under DIR/checkpoints, or None."""
    numbered = _numbered(checkpoint_dir(output_dir))
    return max(numbered) if numbered else None


def remove_leftovers(output_dir):
    """Delete the temporary files killed writers left in DIR and DIR/checkpoints (at start-up,
    before anything writes there); returns their paths."""
    return remove_stale_temps(output_dir) + remove_stale_temps(checkpoint_dir(output_dir))


def non_finite_entry(state):
    """Name of the first tensor with a NaN or inf among a checkpoint's trained state (weights,
    loss state, optimizer moments, pending loss), None when all are finite."""
    trained = {k: state[k] for k in ("model", "projection", "loss", "optimizer", "pending_loss") if k in state}
    return checkpoints.first_non_finite(checkpoints.named_tensors(trained))


def _numbered(ckdir):
    out = []
    if ckdir.is_dir():
        for p in ckdir.iterdir():
            m = _NAME.match(p.name)
            if m:
                out.append((int(m.group(1)), p))
    return out


def find_resume_checkpoint(output_dir):
    """(path, state) of the newest usable checkpoint under DIR/checkpoints, or (None, None).

    Empty, truncated or corrupt files (checksum mismatch: a flipped bit, a bad copy) and files with
    non-finite weights are skipped with a warning naming them; the next older one is tried.
    """
    ckdir = checkpoint_dir(output_dir)
    candidates = [path for _, path in sorted(_numbered(ckdir), reverse=True)] + [ckdir / "last.pt"]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            state = load_checkpoint(path)
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, and reported
            warnings.warn(f"--resume auto: skipping {path.name}: {first_line(e)}; trying an older checkpoint",
                          stacklevel=2)
            continue
        bad = non_finite_entry(state)
        if bad is not None:
            warnings.warn(f"--resume auto: skipping {path} (step {state.get('step')}): {bad} holds NaN or inf; "
                          "trying an older checkpoint", stacklevel=2)
            continue
        return path, state
    return None, None
