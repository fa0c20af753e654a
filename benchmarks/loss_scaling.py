"""Loss forward + backward time and peak memory against the token count M, with a plot.

    python benchmarks/loss_scaling.py                                   # M = 11k ... 180k
    python benchmarks/loss_scaling.py --ms 11264,22528 --providers research-eager,SinkhornSwapLoss

Each (M, provider) point runs `benchmarks/loss.py` in a fresh process (one point's memory cannot
shape another's), hard targets, K = 3000, D = 256, ε = 0.05 by default; the float64 truth columns
only up to --truth-max (45,056 by default: beyond it the float64 check alone needs tens of GiB).
Speed-up and memory ratios are taken against research-eager at the same M. A point that fails or
runs out of time is recorded with its status and the sweep goes on. Writes
results/<device>-<date>-loss-scaling.csv (loss.py's columns) and a PNG of time and peak memory
against M, SinkhornSwapLoss marked where `streaming="auto"` streams.
"""
import argparse
import csv
import glob
import os
import subprocess
import sys
import tempfile

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks import _report as report  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MS = "11264,22528,45056,90112,180224"


def run_point(m, k, d, eps, provider, repeats, check, timeout, device):
    """loss.py rows of one (M, provider) point, run in a fresh process."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, os.path.join(HERE, "loss.py"), "--sizes", f"{m}x{k}x{d}@{eps}", "--providers",
               provider, "--targets", "hard", "--repeats", str(repeats), "--out", out, "--no-plot",
               "--device", device] + ([] if check else ["--no-check"])
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            tail = (done.stdout + done.stderr)[-400:]
        except subprocess.TimeoutExpired:
            done, tail = None, f"timed out after {timeout} s"
        rows = []
        for path in glob.glob(os.path.join(out, "*.csv")):
            with open(path, newline="") as f:
                rows += [r for r in csv.DictReader(f) if r["provider"] == provider]
        if not rows:
            rows = [{"provider": provider, "M": str(m), "K": str(k), "D": str(d), "eps": str(eps),
                     "targets": "hard", "status": f"failed: {tail.strip().splitlines()[-1] if tail.strip() else '?'}"}]
        return rows


def plot(rows, png_path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        print(f"no plot: matplotlib is not importable ({exc})")
        return None
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for provider in dict.fromkeys(r["provider"] for r in ok):
        pts = sorted((int(r["M"]), float(r["median_ms"]) / 1e3, float(r["peak_mem_mb"] or "nan") / 1024,
                      "streaming" in r.get("output", "")) for r in ok if r["provider"] == provider)
        ms = [p[0] for p in pts]
        for ax, idx in ((axes[0], 1), (axes[1], 2)):
            line, = ax.plot(ms, [p[idx] for p in pts], marker="o", label=provider)
            streamed = [p for p in pts if p[3]]
            if streamed:
                ax.plot([p[0] for p in streamed], [p[idx] for p in streamed], "s", mfc="none", ms=11,
                        color=line.get_color(), label=f"{provider}: streaming")
    for ax, label in ((axes[0], "forward + backward (s)"), (axes[1], "peak extra memory (GiB)")):
        ax.set_xlabel("tokens M")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ms", default=DEFAULT_MS, help=f"comma list of token counts (default {DEFAULT_MS})")
    p.add_argument("--k", type=int, default=3000)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--providers", default="research-eager,SinkhornSwapLoss")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--truth-max", type=int, default=45056, help="largest M with the float64 check")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per point")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=report.RESULTS_DIR)
    args = p.parse_args(argv)
    meta = report.run_metadata("loss-scaling", args.device)
    log = report.CsvLog(args.out, meta)
    print(report.describe(meta), flush=True)
    for m in [int(x) for x in args.ms.split(",") if x.strip()]:
        for provider in [x.strip() for x in args.providers.split(",") if x.strip()]:
            for r in run_point(m, args.k, args.d, args.epsilon, provider, args.repeats, m <= args.truth_max,
                               args.timeout, args.device):
                fields = {c: r[c] for c in report.CSV_COLUMNS if c in r and c not in log.meta and r[c] != ""}
                fields["size"] = f"M={m}"
                log.add(**fields)
                print(f"M={m:>7} {provider:<18} {r.get('median_ms', '-'):>10} ms  peak {r.get('peak_mem_mb', '-')} MiB"
                      f"  load {r.get('load', '-')}  {r.get('status')}  {r.get('output', '')}", flush=True)
            report.fill_ratios(log.rows, ("size",))
            log.rewrite()
    png = plot(log.rows, log.png_path, report.describe(meta))
    print(f"CSV: {log.path}" + (f"\nPNG: {png}" if png else ""))
    return log.path


if __name__ == "__main__":
    main()
