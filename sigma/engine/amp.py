"""The one mixed-precision policy: "auto" is fp16 with a GradScaler on CUDA (the released
recipe) and full precision on the CPU; bf16 only when asked (CPU or CUDA, no scaler needed)."""
import contextlib

import torch

CHOICES = ("auto", "fp16", "bf16", "none")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "none": None}


def resolve_amp(amp, device):
    """"fp16", "bf16" or "none" for the `amp` setting on `device` (ValueError for fp16 on the CPU,
    which has no fp16 autocast worth using, or an unknown setting)."""
    amp = "none" if amp in (None, False) else amp
    if amp not in CHOICES:
        raise ValueError(f"amp must be one of {', '.join(CHOICES)}, got {amp!r}")
    device = torch.device(device)
    if amp == "auto":
        return "fp16" if device.type == "cuda" else "none"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs a CUDA device; use amp=bf16 or amp=none on the CPU")
    return amp


def amp_dtype(amp, device):
    """The autocast dtype of the `amp` setting on `device`, None for full precision."""
    return _DTYPES[resolve_amp(amp, device)]


def autocast(amp, device):
    """A fresh autocast context for `amp` on `device` (a no-op context for full precision)."""
    dtype = amp_dtype(amp, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def build_amp(amp, device):
    """(resolved setting, autocast context factory, GradScaler): the scaler is enabled for fp16 only."""
    resolved = resolve_amp(amp, device)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=resolved == "fp16")
    return resolved, (lambda: autocast(resolved, device)), scaler
