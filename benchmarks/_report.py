"""Run metadata, the CSV log, speed-up/memory ratios, the printed table and the bar plot."""
import csv
import datetime as _dt
import math
import os
import platform
import socket

import torch

from sigma.engine.provenance import git_commit

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")

CSV_COLUMNS = (
    "benchmark", "machine", "device", "device_type", "torch", "triton", "pot", "python", "commit", "date",
    "provider", "size", "M", "K", "D", "eps", "iters", "tau", "targets", "dtype", "output",
    "median_ms", "min_ms", "first_ms", "repeats", "peak_mem_mb", "mem_method", "max_err", "err_what",
    "grad_err", "speedup", "speedup_vs_compile", "mem_vs_research", "floor_ms", "floor_frac", "read_gbps",
    "gemm_gflops", "load", "status",
)


def record_skip(log, prefix, exc, **fields):
    """Print and log a provider that cannot run here (an Unavailable)."""
    print(f"{prefix} skipped: {exc}", flush=True)
    log.add(status=f"skipped: {exc}", **fields)


def record_failure(log, prefix, stage, exc, **fields):
    """Print and log a provider that raised (a failing peer must not stop the others)."""
    msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
    print(f"{prefix} {stage}: {msg}", flush=True)
    log.add(status=f"failed: {msg}", **fields)


# --- run metadata ---------------------------------------------------------------------------

def _version(module):
    try:
        return __import__(module).__version__
    except Exception:
        return ""


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
                pot=_version("ot"), python=platform.python_version(), commit=git_commit(short=True) or "unknown",
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
