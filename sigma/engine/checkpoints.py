"""Reading checkpoints, RNG states that `weights_only` loading accepts, parameter fingerprints.

Every checkpoint is written with `sigma.engine.files.atomic_torch_save` (which records its SHA-256)
and read with `load_checkpoint`, which verifies that checksum and checks its format string
(`files.PRETRAIN_FORMAT`, `files.FINETUNE_FORMAT`, ...).
"""
import hashlib
import random
import re
import warnings

import numpy as np
import torch

from .files import safe_torch_load

_VERSIONED = re.compile(r"^(.*)-v(\d+)$")


def load_checkpoint(path, fmt, map_location="cpu"):
    """The dict in checkpoint `path` (read by `safe_torch_load`: checksum verified, no code
    unpickled), whose "format" must be `fmt`. FileNotFoundError for a missing file; ValueError
    naming the file for one that is empty, truncated, corrupt (`files.ChecksumError`), not a dict,
    or holds another format. A file without a checksum (an older sigma) loads with a warning."""
    state, verified = safe_torch_load(path, map_location=map_location, return_verified=True)
    if not verified:
        warnings.warn(f"{path} has no checksum (written by an older sigma or another program): "
                      "loaded without an integrity check", stacklevel=2)
    found = state.get("format") if isinstance(state, dict) else None
    if found == fmt:
        return state
    want, have = _VERSIONED.match(fmt), _VERSIONED.match(found) if isinstance(found, str) else None
    if want and have and want.group(1) == have.group(1) and int(have.group(2)) < int(want.group(2)):
        raise ValueError(f"{path} is a checkpoint of an older format ({found!r}, this version reads {fmt!r}); "
                         "start a new run")
    raise ValueError(f"{path} is not a {fmt!r} checkpoint (its format is {found!r})")


def rng_state():
    """This process's torch, Python and NumPy (and CUDA, once initialised) generator states, as
    tensors, lists and scalars (what `torch.load(weights_only=True)` reads back)."""
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
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


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


def named_tensors(obj, prefix=""):
    """(dotted name, tensor) of every tensor in nested dicts, lists and tuples (state dicts,
    optimizer states, whole checkpoints), in insertion order."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from named_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from named_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def all_finite(tensors):
    """0-d bool tensor: no NaN or inf in any floating-point tensor of `tensors` (computed where
    they live; reading it is the one host sync)."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point() or t.is_complex()]
    if not flags:
        return torch.ones((), dtype=torch.bool)
    device = flags[0].device
    return torch.stack([f.to(device) for f in flags]).all()


def first_non_finite(named):
    """Name of the first floating-point tensor in `named` ((name, tensor) pairs) holding a NaN or
    inf, None if there is none. One host sync per tensor: for reporting, not for hot paths."""
    for name, t in named:
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            return name
    return None
