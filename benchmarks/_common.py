"""Shared machinery of the benchmark scripts: timing, peak memory, float64 truth, run metadata,
CSV/PNG output and the printed table.

Timing: one first call (compilation, autotuning, lazy initialisation; reported as first_ms), one
call under the memory probe, then `repeats` timed calls; median_ms is their median. On CUDA
every call is bracketed by torch.cuda.synchronize().

Peak memory (peak_mem_mb), the extra memory one call needs on top of its inputs, outputs
included; the method is named in the mem_method column:
- "cuda_max_allocated_delta": torch.cuda.max_memory_allocated() after reset_peak_memory_stats(),
  minus memory_allocated() before the call;
- "rss_hwm_delta": on Linux CPU runs, the process's peak resident set (VmHWM, reset by writing 5
  to /proc/self/clear_refs) minus the resident set before the call, after malloc_trim(0) has
  returned the heap's free pages. It sees every allocation that touches memory (C++ extensions
  and compiled code included), with page granularity;
- "rss_sampled_delta": where the peak cannot be reset, the resident set sampled every 0.5 ms
  by a thread (can miss short peaks).
"""
import csv
import datetime as _dt
import fnmatch
import math
import os
import platform
import socket
import statistics
import subprocess
import threading
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")

CSV_COLUMNS = (
    "benchmark", "machine", "device", "device_type", "torch", "triton", "pot", "python", "commit", "date",
    "provider", "size", "M", "K", "D", "eps", "iters", "tau", "targets", "dtype", "output",
    "median_ms", "min_ms", "first_ms", "repeats", "peak_mem_mb", "mem_method", "max_err", "err_what",
    "grad_err", "speedup", "speedup_vs_compile", "mem_vs_research", "floor_ms", "floor_frac", "read_gbps",
    "gemm_gflops", "load", "status",
)

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


def record_skip(log, prefix, exc, **fields):
    """Print and log a provider that cannot run here (an Unavailable)."""
    print(f"{prefix} skipped: {exc}", flush=True)
    log.add(status=f"skipped: {exc}", **fields)


def record_failure(log, prefix, stage, exc, **fields):
    """Print and log a provider that raised (a failing peer must not stop the others)."""
    msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
    print(f"{prefix} {stage}: {msg}", flush=True)
    log.add(status=f"failed: {msg}", **fields)


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


# --- synchronisation, timing, memory ------------------------------------------------------

def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _can_reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _hwm_bytes()
        return True
    except OSError:
        return False


def _release_free_heap():
    """Give the heap's free pages back to the OS (glibc malloc_trim), so that memory the call
    reuses from earlier, freed allocations shows up in its resident-set peak instead of hiding in
    the baseline (glibc serves allocations below its adaptive mmap threshold, up to 32 MiB, from
    the heap and keeps them resident after free)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def cpu_mem_method():
    if not os.path.exists("/proc/self/statm"):
        return None
    return "rss_hwm_delta" if _can_reset_hwm() else "rss_sampled_delta"


def mem_method(device):
    return "cuda_max_allocated_delta" if torch.device(device).type == "cuda" else cpu_mem_method()


def measure_peak_mb(fn, device):
    """Run fn() once; return (extra peak memory in MiB or None, method name)."""
    device = torch.device(device)
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return peak / 2**20, "cuda_max_allocated_delta"
    method = cpu_mem_method()
    if method is None:
        fn()
        return None, "unavailable"
    _release_free_heap()
    if method == "rss_hwm_delta":
        _can_reset_hwm()
        base = _rss_bytes()
        out = fn()
        peak = _hwm_bytes() - base
        del out
        return max(peak, 0) / 2**20, method
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        done.set()
        t.join()
    peak[0] = max(peak[0], _rss_bytes())
    del out
    return (peak[0] - base) / 2**20, method


def bench(fn, device, repeats):
    """First call, memory-probe call, then `repeats` timed calls of fn().

    Returns dict(first_ms, median_ms, min_ms, peak_mem_mb, mem_method, out) where out is the
    last call's result (for the accuracy check).
    """
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    first_ms = (time.perf_counter() - t0) * 1e3
    del out  # free it before the memory probe
    out = None
    peak_mb, method = measure_peak_mb(fn, device)
    times = []
    for _ in range(repeats):
        out = None
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return dict(first_ms=first_ms, median_ms=statistics.median(times), min_ms=min(times),
                peak_mem_mb=peak_mb, mem_method=method, out=out)


# --- float64 truth --------------------------------------------------------------------------

def float64_sinkhorn(row_scores, m, k, epsilon, n_iters, chunk=2048):
    """Log-domain Sinkhorn (docs/sinkhorn.md) in float64, row block by row block (memory O(chunk·K)).

    row_scores(i0, i1) -> float64 (i1-i0, K) scores of those rows. Returns (u (M,), v (K,)),
    Q_ik = M·exp(S_ik/ε + u_i + v_k). Independent of sigma_kernels on purpose: it is the truth.
    """
    inv_eps = 1.0 / epsilon
    log_m, log_k = math.log(m), math.log(k)
    blocks = [(i0, min(i0 + chunk, m)) for i0 in range(0, m, chunk)]
    u = None
    v = None
    for _ in range(n_iters):
        parts = []
        for i0, i1 in blocks:
            s = row_scores(i0, i1) * inv_eps
            if u is not None:
                s += u[i0:i1, None]
            parts.append(torch.logsumexp(s, dim=0))
        v = -log_k - torch.logsumexp(torch.stack(parts), dim=0)
        u_parts = [-log_m - torch.logsumexp(row_scores(i0, i1) * inv_eps + v, dim=1) for i0, i1 in blocks]
        u = torch.cat(u_parts)
    return u, v


def float64_sinkhorn_stored(s64, epsilon, n_iters):
    """`float64_sinkhorn` for a stored float64 S (M, K): the same (u, v), faster.

    When the exponents span at most 200 ((max S − min S)/ε ≤ 200), it iterates in the exp
    domain on the shifted kernel G = exp((S − max S)/ε), two float64 mat-vecs per iteration,
    with scalings that stay within about e^±200 (no over/underflow in float64); otherwise it runs
    the log-domain loop.
    """
    m, k = s64.shape
    smin, smax = float(s64.min()), float(s64.max())
    if (smax - smin) / epsilon > 200:
        return float64_sinkhorn(lambda i0, i1: s64[i0:i1], m, k, epsilon, n_iters)
    kernel = (s64 - smax).div_(epsilon).exp_()  # G, entries in [exp(-200), 1]
    # a_i = exp(u_i), b_k = exp(v_k + max S/ε):  b = 1/(K·Gᵀa),  a = 1/(M·G b);  u = 0 at the start
    a = torch.ones(m, dtype=torch.float64, device=s64.device)
    b = None
    for _ in range(n_iters):
        b = 1.0 / (k * (kernel.T @ a))
        a = 1.0 / (m * (kernel @ b))
    return torch.log(a), torch.log(b) - smax / epsilon


def max_abs_error(blocks):
    """Max |a - b| over an iterable of (a, b) pairs; NaN if any entry is not finite."""
    worst = 0.0
    for a, b in blocks:
        d = (a.double() - b.double()).abs()
        if not bool(torch.isfinite(d).all()):
            return float("nan")
        worst = max(worst, float(d.max()))
    return worst


# --- run metadata ---------------------------------------------------------------------------

def _version(module):
    try:
        return __import__(module).__version__
    except Exception:
        return ""


def _git_commit():
    """Short commit of the repo (+dirty), or $SIGMA_BENCH_COMMIT when set (for copies of the tree
    without .git, e.g. on a lent GPU machine)."""
    if os.environ.get("SIGMA_BENCH_COMMIT"):
        return os.environ["SIGMA_BENCH_COMMIT"]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sigma_kernels", "csrc", "sigma",
                                "benchmarks/sinkhorn.py", "benchmarks/loss.py", "benchmarks/research_style.py",
                                "benchmarks/_common.py"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_name()} ({torch.get_num_threads()} threads)"


def run_metadata(benchmark, device):
    now = _dt.datetime.now(_dt.timezone.utc)
    return dict(benchmark=benchmark, machine=socket.gethostname(), device=device_name(device),
                device_type=torch.device(device).type, torch=torch.__version__, triton=_version("triton"),
                pot=_version("ot"), python=platform.python_version(), commit=_git_commit(),
                date=now.strftime("%Y-%m-%dT%H:%M:%SZ"), _stamp=now.strftime("%Y%m%d-%H%M"))


def describe(meta):
    return (f"{meta['benchmark']} benchmark on {meta['device']} (host {meta['machine']}), torch {meta['torch']}, "
            f"triton {meta['triton'] or '-'}, commit {meta['commit']}, {meta['date']}")


# --- output -----------------------------------------------------------------------------------

class CsvLog:
    """Writes one row per measurement as soon as it exists (a killed run keeps what it did)."""

    def __init__(self, out_dir, meta):
        os.makedirs(out_dir, exist_ok=True)
        base = f"{device_slug(meta)}-{meta['_stamp']}-{meta['benchmark']}"
        self.path = os.path.join(out_dir, base + ".csv")
        self.png_path = os.path.join(out_dir, base + ".png")
        self.meta = {k: v for k, v in meta.items() if not k.startswith("_")}
        self.rows = []
        with open(self.path, "w", newline="") as f:
            csv.DictWriter(f, CSV_COLUMNS).writeheader()

    def add(self, **fields):
        row = {c: "" for c in CSV_COLUMNS}
        row.update(self.meta)
        unknown = set(fields) - set(CSV_COLUMNS)
        if unknown:
            raise KeyError(f"unknown CSV columns {sorted(unknown)}")
        row.update({k: _fmt(v) for k, v in fields.items()})
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, CSV_COLUMNS).writerow(row)
        return row

    def rewrite(self):
        """Rewrite the file from self.rows (after speed-ups were filled in)."""
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, CSV_COLUMNS)
            w.writeheader()
            w.writerows(self.rows)


def device_slug(meta):
    """'nvidia-h100-80gb-hbm3', 'cpu-2t': the device part of result file names."""
    if meta["device_type"] == "cuda":
        return "-".join("".join(ch if ch.isalnum() else " " for ch in meta["device"].lower()).split())
    return f"cpu-{torch.get_num_threads()}t"


def _fmt(v):
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.6g}"
    if v is None:
        return ""
    return v


def fill_ratios(rows, key_fields):
    """speedup = research-eager median / median, speedup_vs_compile = research-compile median /
    median and mem_vs_research = peak / research-eager peak, matched on key_fields (same size,
    targets, ...)."""
    def key(r):
        return tuple(r[f] for f in key_fields)

    def baseline(provider):
        return {key(r): r for r in rows if r["provider"] == provider and r["status"] == "ok"}

    eager, compiled = baseline("research-eager"), baseline("research-compile")
    for r in rows:
        if r["status"] != "ok":
            continue
        b = eager.get(key(r))
        if b is not None:
            r["speedup"] = _fmt(float(b["median_ms"]) / float(r["median_ms"]))
            if r["peak_mem_mb"] and b["peak_mem_mb"] and float(b["peak_mem_mb"]) > 0:
                r["mem_vs_research"] = _fmt(float(r["peak_mem_mb"]) / float(b["peak_mem_mb"]))
        b = compiled.get(key(r))
        if b is not None:
            r["speedup_vs_compile"] = _fmt(float(b["median_ms"]) / float(r["median_ms"]))


def display(field, value):
    """A CSV value as shown in tables: rounded numbers, short statuses."""
    value = str(value)
    if field == "status":
        return value if len(value) <= 40 else value[:37] + "..."
    try:
        x = float(value)
    except ValueError:
        return value
    if math.isnan(x) or field not in ("median_ms", "min_ms", "first_ms", "peak_mem_mb", "speedup",
                                      "speedup_vs_compile", "mem_vs_research", "max_err", "grad_err",
                                      "floor_ms", "floor_frac"):
        return value
    if field == "floor_frac":
        return f"{x:.2f}"
    if field in ("max_err", "grad_err"):
        return f"{x:.1e}"
    if field in ("speedup", "speedup_vs_compile", "mem_vs_research"):
        return f"{x:.2f}" if x < 10 else f"{x:.1f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def format_table(rows, columns):
    """Plain-text table of the given (header, field) columns."""
    head = [h for h, _ in columns]
    body = [[display(f, r.get(f, "")) for _, f in columns] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(x.ljust(w) for x, w in zip(r, widths)) for r in body]
    return "\n".join(out)


def summary(rows, columns):
    """The table of measured (or failed) rows, then one line per skipped provider."""
    shown = [r for r in rows if not r["status"].startswith("skipped")]
    text = format_table(shown, columns)
    skipped = {}
    for r in rows:
        if r["status"].startswith("skipped"):
            skipped.setdefault(r["provider"], r["status"])
    if skipped:
        text += "\n\n" + "\n".join(f"{p}: {s}" for p, s in skipped.items())
    return text


def plot_bars(rows, png_path, title, group_field, series_field):
    """Two panels (median ms, log scale; peak MiB) of bars: groups on x, one bar per series."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        print(f"no plot: matplotlib is not importable ({exc})")
        return None

    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    groups = list(dict.fromkeys(r[group_field] for r in ok))
    series = list(dict.fromkeys(r[series_field] for r in ok))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(groups) * max(1, len(series)) / 2 + 4), 4.8))
    width = 0.8 / max(1, len(series))
    for ax, field, label in ((axes[0], "median_ms", "median time (ms, log)"),
                             (axes[1], "peak_mem_mb", "peak extra memory (MiB)")):
        for j, s in enumerate(series):
            xs, ys, ups = [], [], []
            for i, g in enumerate(groups):
                match = [r for r in ok if r[group_field] == g and r[series_field] == s and r[field] not in ("", "nan")]
                if match:
                    xs.append(i + (j - (len(series) - 1) / 2) * width)
                    ys.append(float(match[0][field]))
                    ups.append(f"×{float(match[0]['speedup']):.2g}" if match[0]["speedup"] else "")
            if xs:
                bars = ax.bar(xs, ys, width, label=str(s))
                if field == "median_ms":  # each bar's speed-up over research-eager
                    ax.bar_label(bars, ups, fontsize=6)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(label)
        if field == "median_ms":
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title.replace(", torch", "\ntorch", 1), fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
