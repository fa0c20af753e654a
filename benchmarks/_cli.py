"""Command-line helpers of the benchmark scripts: dtype and size parsing, provider selection, and
the check that a sigma_kernels backend can run a provider here."""
import fnmatch

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class Unavailable(Exception):
    """A provider cannot run here (or not with these settings); the message says why."""


def require_backend(name, device, dtype):
    """The sigma_kernels backend namespace `name`, or Unavailable if it cannot take `dtype`
    tensors on `device` in this process."""
    from sigma_kernels.backends import BackendUnavailableError, get_backend
    try:
        ns = get_backend(name)
    except BackendUnavailableError as exc:
        raise Unavailable(str(exc)) from exc
    device_type = torch.device(device).type
    if ns.device_types is not None and device_type not in ns.device_types:
        raise Unavailable(f"backend {name!r} runs on {list(ns.device_types)} tensors, not {device_type}")
    if dtype not in ns.supported_dtypes:
        raise Unavailable(f"backend {name!r} does not support {dtype}")
    return ns


def parse_dtype(name):
    try:
        return DTYPES[name]
    except KeyError:
        raise SystemExit(f"--dtype must be one of {sorted(DTYPES)}, got {name!r}") from None


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def parse_sizes(text, presets):
    """'name,MxKxD,MxKxD@eps' -> list of (label, M, K, D, eps or None)."""
    sizes = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if item in presets:
            m, k, d, eps = presets[item]
            sizes.append((item, m, k, d, eps))
            continue
        shape, _, eps = item.partition("@")
        try:
            m, k, d = (int(v) for v in shape.lower().split("x"))
            eps = float(eps) if eps else None
        except ValueError:
            raise SystemExit(f"--sizes: {item!r} is neither a preset {sorted(presets)} nor MxKxD[@eps]") from None
        if min(m, k, d) < 1:
            raise SystemExit(f"--sizes: {item!r} must have positive M, K, D")
        sizes.append((f"{m}x{k}x{d}", m, k, d, eps))
    if not sizes:
        raise SystemExit("--sizes is empty")
    return sizes


def select(names, patterns):
    """The names matching any of the comma-separated glob patterns (all when patterns is None)."""
    if not patterns:
        return list(names)
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)]
