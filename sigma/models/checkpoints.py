"""Reading and writing weights safely (no pickle code execution)."""
import argparse
import os
from pathlib import Path

import torch

# Harmless non-tensor types found in public checkpoints: VideoMAE/SIGMA store their command-line
# arguments as an argparse.Namespace.
SAFE_GLOBALS = (argparse.Namespace,)


def safe_torch_load(path, map_location="cpu"):
    """`torch.load(path, weights_only=True)` with a small allow-list (argparse.Namespace).

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


def load_state_file(path):
    """Tensors of a `.safetensors` file, or the object in a `.pth`/`.pt`/`.bin` file (read safely)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return safe_torch_load(path)


def atomic_save(obj_writer, path):
    """Write a file via `obj_writer(tmp_path)` then os.replace, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        obj_writer(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
