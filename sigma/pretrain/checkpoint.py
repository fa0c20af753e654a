"""Pretraining checkpoints: atomic writes, discovery for `--resume auto`, RNG state, provenance.

Layout: `DIR/checkpoints/checkpoint-<step>.pt` and `DIR/checkpoints/last.pt` (same content). A
checkpoint is a plain dict of tensors, dicts, lists and scalars (format "sigma-pretrain-v1",
documented in docs/pretraining.md) so `torch.load(weights_only=True)` reads it.
"""
import hashlib
import importlib.metadata
import os
import platform
import random
import re
import socket
import subprocess
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from sigma.engine.files import PRETRAIN_FORMAT as FORMAT
from sigma.engine.files import atomic_write, atomic_write_text  # noqa: F401 - re-exported

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


def checkpoint_dir(output_dir):
    return Path(output_dir) / "checkpoints"


def save_checkpoint(state, output_dir, keep=None):
    """Write `state` as checkpoint-<step>.pt and last.pt under DIR/checkpoints; keep the newest
    `keep` numbered ones (None keeps all). Returns the numbered path."""
    ckdir = checkpoint_dir(output_dir)
    path = ckdir / f"checkpoint-{int(state['step'])}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))

    def link_or_copy(tmp):
        # A hard link costs no space; fall back to a copy where links are not supported.
        os.unlink(tmp)
        try:
            os.link(path, tmp)
        except OSError:
            import shutil
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


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint written by `save_checkpoint` (weights_only: no code is unpickled)."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for a file it cannot read
        raise ValueError(f"{path} cannot be read as a checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a sigma pretraining checkpoint (format {FORMAT!r})")
    return state


def find_resume_checkpoint(output_dir):
    """(path, state) of the newest readable checkpoint under DIR/checkpoints, or (None, None).

    Unreadable or truncated files (e.g. from a crash during a non-atomic copy) are skipped with a
    warning naming them; the next older one is tried.
    """
    ckdir = checkpoint_dir(output_dir)
    for _, path in sorted(_numbered(ckdir), reverse=True):
        try:
            return path, load_checkpoint(path)
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, and reported
            warnings.warn(f"skipping unreadable checkpoint {path}: {type(e).__name__}: {e}", stacklevel=2)
    last = ckdir / "last.pt"
    if last.is_file():
        try:
            return last, load_checkpoint(last)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"skipping unreadable checkpoint {last}: {type(e).__name__}: {e}", stacklevel=2)
    return None, None


# --- RNG state (as tensors and plain lists, so weights_only loading accepts it) ---------------

def rng_state():
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --- provenance -------------------------------------------------------------------------------

def _git_commit():
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _versions():
    out = {"python": platform.python_version()}
    for dist in ("sigma-video", "torch", "timm", "numpy", "triton", "decord", "av", "transformers", "PyYAML"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    out["cuda"] = torch.version.cuda
    return out


def provenance(cfg, world_size, argv=None):
    """What is needed to tell how a run was made: config seed, commit, versions, machine, command."""
    return {
        "seed": cfg["seed"],
        "commit": _git_commit(),
        "versions": _versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "world_size": world_size,
        "argv": list(sys.argv if argv is None else argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def state_fingerprint(state_dict):
    """sha256 of a state dict's tensors (names and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(state_dict.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def parameter_fingerprint(module):
    """`state_fingerprint` of a module: equal on ranks that hold bitwise-equal weights."""
    return state_fingerprint(module.state_dict())
