"""GPU cost model on paper: bytes, FLOPs and exps of every GPU path, and the floor they imply.

    python benchmarks/gpu_model.py                      # the table of docs/performance.md ("GPU cost model")
    python benchmarks/gpu_model.py --occupancy          # + occupancy of every compiled Triton launch
    python benchmarks/gpu_model.py --compare RUN_DIR    # measured (benchmark CSVs) against predicted

Each path is a list of phases (one kernel or one eager op chain), each with the bytes it moves
through HBM, its matrix-product FLOPs at a stated precision, and its exps. A phase takes
max(bytes / bandwidth, FLOPs / rate, exps / exp rate) (a roofline per phase; phases do not
overlap) and a path takes the sum: the floor, what the algorithm needs if every kernel ran at the
published peaks. Measured times sit above it; `--compare` prints measured / predicted per row.

Counts, for M tokens, K prototypes, D feature dimensions, n Sinkhorn iterations, fp32 scores
(one "pass" = one read or one write of an M×K fp32 matrix, 4·M·K bytes; one "GEMM" = 2·M·K·D FLOPs):
the derivations are in docs/performance.md, read from the kernels' launch code (Triton backend)
and from benchmarks/research_style.py (eager). Features and prototypes (M×D, K×D) are re-read per
sweep; that traffic is included but is small next to the passes.

Peaks (published, dense): H100 SXM 3.35 TB/s HBM3, 67 TFLOP/s FP32, 494.7 TFLOP/s TF32 tensor core;
H200 4.8 TB/s, same compute. Derived here, not published: tf32x3 (the Triton kernels' precision for
fp32 operands, three TF32 products per tile) at a third of the TF32 rate; the exp rate as 16
MUFU ex2 per clock per SM (CUDA C programming guide, compute capability 9.0) × 132 SMs × 1.98 GHz.
torch.mm on fp32 tensors runs at FP32 (torch's default `allow_tf32=False`).
"""
import argparse
import csv
import glob
import json
import math
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


GPUS = {
    "H100 SXM": {"hbm_bytes_s": 3.35e12, "fp32_flop_s": 67e12, "tf32_flop_s": 494.7e12, "sms": 132, "clock_hz": 1.98e9},
    "H200": {"hbm_bytes_s": 4.8e12, "fp32_flop_s": 67e12, "tf32_flop_s": 494.7e12, "sms": 132, "clock_hz": 1.98e9},
}
EXP_PER_CLOCK_PER_SM = 16
# Hopper (sm_90) per-SM limits, for occupancy.
SM90 = {"registers": 65536, "shared_bytes": 228 * 1024, "warps": 64, "blocks": 32, "register_unit": 256}
SIZES = [(22528, 3000, 256), (45056, 3000, 256), (56320, 3000, 256), (22528, 3000, 768), (56320, 3000, 768)]
ITERS = 10
# The Triton cross-entropy backward recomputes the logits once per BLOCK_DO-wide chunk of D
# (grid (row blocks, D / BLOCK_DO)); GPU config block_d_out (sigma_kernels/backends/triton/_common.py).
BLOCK_DO = 128
# Score bytes per element on CUDA below which SinkhornSwapLoss(streaming="auto") stores (sigma/losses.py).
CUDA_SCORE_BUDGET = 128 * 2**20
HERE = os.path.dirname(os.path.abspath(__file__))
RESOURCES = os.path.join(HERE, "results", "sm90-20261207-1748-triton-resources.json")


def rate(gpu, precision):
    """Matrix-product FLOP/s at `precision`: fp32 (CUDA cores), tf32, or tf32x3 (derived: TF32 / 3)."""
    g = GPUS[gpu]
    return {"fp32": g["fp32_flop_s"], "tf32": g["tf32_flop_s"], "tf32x3": g["tf32_flop_s"] / 3}[precision]


def exp_rate(gpu):
    g = GPUS[gpu]
    return EXP_PER_CLOCK_PER_SM * g["sms"] * g["clock_hz"]


def phase(name, passes=0, gemms=0, exps=0, precision="fp32", extra_bytes=0):
    """One phase: `passes` M×K fp32 transfers, `gemms` M×K×D products at `precision`, `exps` in units of M·K."""
    return {"name": name, "passes": passes, "gemms": gemms, "exps": exps, "precision": precision,
            "extra_bytes": extra_bytes}


def _sweeps(m, k, d, count):
    """HBM bytes of `count` streaming sweeps: each reads the M×D features and the K×D prototypes once."""
    return count * (m + k) * d * 4


# --- the paths ---------------------------------------------------------------------------------

def sinkhorn_eager(m, k, d, n):
    """benchmarks/research_style.py `research_sinkhorn`, S -> Q: S/ε and exp (r+w each), the grand
    sum (r) and its division (r+w); per iteration two sums (r) and four in-place divisions (r+w); the
    final ×M (r+w): 10·n + 9 passes, M·K exps."""
    return [phase("exp and normalise", passes=7, exps=1), phase("iterations", passes=10 * n), phase("scale", passes=2)]


def sinkhorn_stored(m, k, d, n, output="Q"):
    """Triton on stored S: the first column LSE (1 read), n fused row steps (1 read each: row LSE
    and the next column partials from the same tile, 2 exps per score), then the plan (1 read, 1
    write) or the labels (1 read)."""
    out = phase("plan Q", passes=2, exps=1) if output == "Q" else phase("labels", passes=1)
    return [phase("first column LSE", passes=1, exps=1), phase("row steps", passes=n, exps=2 * n), out]


def sinkhorn_cuda(m, k, d, n):
    """The extension's CUDA kernels: column LSE (1 read), row steps of two reads each; the plan by
    the reference backend's torch ops (S/ε, +u, +v, +log M, exp: 10 passes)."""
    return [phase("first column LSE", passes=1, exps=1), phase("row steps", passes=2 * n, exps=2 * n),
            phase("plan Q (torch ops)", passes=10, exps=1)]


def sinkhorn_streaming(m, k, d, n, precision="tf32x3"):
    """Triton streaming: S recomputed tile by tile; the first column sweep, then per iteration a
    row sweep and a column sweep: 2·n + 1 GEMMs and as many exps of M·K; returns potentials."""
    sweeps = 2 * n + 1
    return [phase("sweeps", gemms=sweeps, exps=sweeps, precision=precision, extra_bytes=_sweeps(m, k, d, sweeps))]


def loss_eager(m, k, d, n, targets="hard"):
    """benchmarks/research_style.py `research_loss` forward + backward (autograd): two score GEMMs
    (written: 2 passes), two `research_sinkhorn` (10·n + 9 each, + argmax 1 for hard targets); per
    cross-entropy term S/τ (2) and log_softmax (2), then nll (1) for hard targets or q·log p and its
    sum (4) for soft ones; backward per term: nll backward (2) or the q product (3), log_softmax
    backward (3), /τ (2); three backward GEMMs reading dS (3). 5 GEMMs in FP32 (torch.mm).
    tests/test_benchmarks.py counts these transfers op by op on the eager code itself."""
    per_solve = 10 * n + 9 + (1 if targets == "hard" else 0)
    ce_fwd = 5 if targets == "hard" else 8
    ce_bwd = 7 if targets == "hard" else 8
    return [phase("score GEMMs", passes=2, gemms=2),
            phase("two solves", passes=2 * per_solve, exps=2),
            phase("cross-entropy forward", passes=2 * ce_fwd, exps=2),
            phase("cross-entropy backward", passes=2 * ce_bwd),
            phase("backward GEMMs", passes=3, gemms=3)]


def loss_stored(m, k, d, n, targets="hard", stats=False, fused_products=False):
    """SinkhornSwapLoss, stored scores, on CUDA: per branch the score GEMM (torch.mm, FP32; 1 write)
    and the Triton solve (n + 1 reads). Hard: labels (Triton assign, 1 read) and the softmax
    products, which on CUDA run as torch ops (no Triton kernel): S/τ (2), logsumexp (6: max, shift,
    exp, sum), softmax (2) and a GEMM reading P (1) per product: P_v·C, P_p·C, P_pᵀ·x_p (5 GEMMs in
    all). Soft: the swapped pass in row chunks of torch ops over S_p and a recomputed S_v (50
    passes; 6 GEMMs in all). `fused_products`: one pass instead (1 read per branch hard, S_p read
    and S_v recomputed soft: the CPU backend's schedule, the floor of the design). `stats`: + the
    entropy diagnostics in row blocks of torch ops (14 passes per branch, + argmax 5 when soft)."""
    phases = [phase("score GEMMs", passes=2, gemms=2), phase("solves", passes=2 * (n + 1), exps=4 * n + 2)]
    if targets == "hard":
        phases.append(phase("labels", passes=2))
        if fused_products:
            phases.append(phase("softmax products (fused)", passes=2, gemms=3, exps=2))
        else:
            phases.append(phase("softmax products (torch ops)", passes=2 * 10 + 3, gemms=3, exps=4))
    elif fused_products:
        phases.append(phase("swapped products (fused)", passes=1, gemms=4, exps=4))
    else:
        phases.append(phase("swapped products (torch ops)", passes=50, gemms=4, exps=8))
    if stats:
        phases.append(phase("entropy diagnostics (torch ops)", passes=28 if targets == "hard" else 38, exps=4))
    return phases


def loss_streaming(m, k, d, n, targets="hard", stats=False, precision="tf32x3"):
    """SinkhornSwapLoss, streaming (Triton): two solves (2·n + 1 sweeps each); hard: the labels (1
    sweep per branch) and the fused cross-entropy: forward 1 sweep per term, backward dx and (for
    the prototypes' term) dC each recompute the logits once per 128-wide chunk of D (R = ⌈D/128⌉)
    plus one product; soft (on-the-fly Sinkhorn targets): every logits tile also needs the other
    branch's tile, and the backward first recomputes the target LSE (1 sweep per term).
    `stats`: + the entropy in row blocks of torch ops (a torch.mm of the scores per branch, FP32,
    written: 1 pass, and 14 passes)."""
    r = math.ceil(d / BLOCK_DO)
    solves = 2 * (2 * n + 1)
    if targets == "hard":
        ce = 2 + 2 + (r + 1) + 2 * (r + 1)  # labels, forward, dx of the video term, dx + dC of the projection term
    else:
        ce = 4 + 2 + (2 * r + 1) + 2 * (2 * r + 1)  # forward (own + target tiles), target LSE, dx, dx + dC
    exps = solves + (2 + 2 + 3 * r if targets == "hard" else 4 + 2 + 6 * r)
    phases = [phase("solves and cross-entropy sweeps", gemms=solves + ce, exps=exps, precision=precision,
                    extra_bytes=_sweeps(m, k, d, solves + ce))]
    if stats:
        phases.append(phase("entropy diagnostics (torch ops)", passes=2 * (1 + 14), gemms=2, exps=4))
    return phases


PATHS = {
    ("sinkhorn", "eager"): sinkhorn_eager,
    ("sinkhorn", "stored"): sinkhorn_stored,
    ("sinkhorn", "streaming"): sinkhorn_streaming,
    ("sinkhorn", "cuda"): sinkhorn_cuda,
    ("loss", "eager"): loss_eager,
    ("loss", "stored"): loss_stored,
    ("loss", "stored, fused products"): lambda m, k, d, n, targets="hard": loss_stored(m, k, d, n, targets,
                                                                                       fused_products=True),
    ("loss", "streaming"): loss_streaming,
    ("sinkhorn", "streaming, tf32"): lambda m, k, d, n: sinkhorn_streaming(m, k, d, n, precision="tf32"),
    ("loss", "streaming, tf32"): lambda m, k, d, n, targets="hard": loss_streaming(m, k, d, n, targets,
                                                                                   precision="tf32"),
}


def cost(phases, m, k, d, gpu):
    """(seconds, bytes, flops, exps) of a path at the peaks of `gpu`."""
    total = nbytes = flops = exps = 0.0
    for p in phases:
        b = p["passes"] * 4.0 * m * k + p["extra_bytes"]
        f = p["gemms"] * 2.0 * m * k * d
        e = p["exps"] * float(m) * k
        total += max(b / GPUS[gpu]["hbm_bytes_s"], f / rate(gpu, p["precision"]) if f else 0.0, e / exp_rate(gpu))
        nbytes, flops, exps = nbytes + b, flops + f, exps + e
    return total, nbytes, flops, exps


def predict_ms(benchmark, path, m, k, d, n, gpu, **kw):
    return cost(PATHS[(benchmark, path)](m, k, d, n, **kw), m, k, d, gpu)[0] * 1e3


def auto_streams(m, k, budget=CUDA_SCORE_BUDGET):
    """Whether SinkhornSwapLoss(streaming="auto") streams on CUDA today (4 bytes per stored score)."""
    return m * k * 4 > budget


# --- benchmark rows -> model paths --------------------------------------------------------------

def row_path(row):
    """(benchmark, path, kwargs) that predicts a benchmark CSV row, or None where the model has none."""
    bench, provider = row.get("benchmark"), row.get("provider", "")
    if bench == "sinkhorn":
        return {"research-eager": ("sinkhorn", "eager", {}), "triton": ("sinkhorn", "stored", {}),
                "triton-streaming": ("sinkhorn", "streaming", {}), "cuda": ("sinkhorn", "cuda", {})}.get(provider)
    if bench == "loss":
        targets = row.get("targets") or "hard"
        if provider == "research-eager":
            return ("loss", "eager", {"targets": targets})
        if provider.startswith("SinkhornSwapLoss"):
            m, k = int(row["M"]), int(row["K"])
            stats = provider != "SinkhornSwapLoss-nostats"
            streams = {"SinkhornSwapLoss-stored": False, "SinkhornSwapLoss-streaming": True}.get(provider,
                                                                                              auto_streams(m, k))
            return ("loss", "streaming" if streams else "stored", {"targets": targets, "stats": stats})
    return None


def gpu_of(device_name):
    """The GPUS key for a torch device name, or None (an H100 PCIe or NVL has other peaks)."""
    name = device_name.upper()
    if "H200" in name:
        return "H200"
    if "H100" in name and "PCIE" not in name and "NVL" not in name:
        return "H100 SXM"
    return None


def compare(run_dir):
    """Lines 'measured vs predicted' for every ok row of the benchmark CSVs under run_dir."""
    lines = [f"{'benchmark':9} {'provider':28} {'M×K×D':17} {'targets':7} {'measured ms':>11} "
             f"{'floor ms':>9} {'measured/floor':>14}"]
    for path in sorted(glob.glob(os.path.join(run_dir, "*.csv"))):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("status") != "ok" or not row.get("median_ms"):
                    continue
                found, gpu = row_path(row), gpu_of(row.get("device", ""))
                size = f"{row['M']}×{row['K']}×{row['D']}"
                if found is None or gpu is None:
                    why = "no model for this provider" if found is None else f"no peaks for {row.get('device')!r}"
                    lines.append(f"{row['benchmark']:9} {row['provider']:28} {size:17} {row.get('targets', ''):7} "
                                 f"{float(row['median_ms']):>11.2f}   ({why})")
                    continue
                bench, name, kw = found
                floor = predict_ms(bench, name, int(row["M"]), int(row["K"]), int(row["D"]), int(row["iters"]),
                                   gpu, **kw)
                measured = float(row["median_ms"])
                lines.append(f"{bench:9} {row['provider']:28} {size:17} {row.get('targets', ''):7} {measured:>11.2f} "
                             f"{floor:>9.2f} {measured / floor:>13.2f}x  ({name}, {gpu})")
    return lines


# --- occupancy -----------------------------------------------------------------------------------

def occupancy(record, sm=SM90):
    """(blocks per SM, resident warps per SM / 64) of one compile-check launch record."""
    warps = record["num_warps"]
    regs_per_warp = math.ceil(record["registers"] * 32 / sm["register_unit"]) * sm["register_unit"]
    limits = [sm["registers"] // (regs_per_warp * warps), sm["warps"] // warps, sm["blocks"]]
    if record["shared_bytes"]:
        limits.append(sm["shared_bytes"] // record["shared_bytes"])
    blocks = min(limits)
    return blocks, blocks * warps / sm["warps"]


def occupancy_lines(path=RESOURCES):
    with open(path) as f:
        data = json.load(f)
    lines = [f"occupancy on sm_{data['arch']} from {os.path.basename(path)} (registers/thread, warps, dynamic "
             "shared memory per block -> blocks per SM, occupancy; the launch with the most registers per kernel, "
             "target kind and dtype)"]
    worst = {}  # per (kernel, TARGET, dtype): the launch with the most registers
    for r in data["launches"]:
        key = (r["kernel"], r["constexprs"].get("TARGET", ""), r["dtype"])
        if key not in worst or r["registers"] > worst[key]["registers"]:
            worst[key] = r
    for (kernel, target, dtype), r in sorted(worst.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2])):
        blocks, occ = occupancy(r)
        lines.append(f"  {kernel:24} {str(target):2} {dtype:6} {r['registers']:>3} regs {r['num_warps']:>2} warps "
                     f"{r['shared_bytes'] // 1024:>3} KiB -> {blocks} block(s)/SM, {occ:.0%}"
                     + (f", SPILLS {r['spill_bytes']} B" if r["spill_bytes"] else ""))
    return lines


# --- the table -----------------------------------------------------------------------------------

def table_rows(sizes=SIZES, n=ITERS, gpus=tuple(GPUS)):
    """Rows (what, M, K, D, path, GB, TFLOP, floor ms per GPU, eager floor / this floor on the first GPU)."""
    rows = []
    for m, k, d in sizes:
        groups = [("Sinkhorn S→Q", "sinkhorn", [("eager", {}), ("stored", {}), ("cuda", {}), ("streaming", {}),
                                                    ("streaming, tf32", {})])]
        for targets in ("hard", "soft"):
            groups.append((f"loss fwd+bwd, {targets}", "loss",
                           [("eager", {"targets": targets}), ("stored", {"targets": targets}),
                            ("stored, fused products", {"targets": targets}), ("streaming", {"targets": targets}),
                            ("streaming, tf32", {"targets": targets})]))
        for what, bench, paths in groups:
            eager = None
            for name, kw in paths:
                phases = PATHS[(bench, name)](m, k, d, n, **kw)
                per_gpu = [cost(phases, m, k, d, g) for g in gpus]
                t0, nbytes, flops, _ = per_gpu[0]
                eager = t0 if name == "eager" else eager
                rows.append(dict(what=what, M=m, K=k, D=d, path=name, gb=nbytes / 1e9, tflop=flops / 1e12,
                                 floors=[c[0] * 1e3 for c in per_gpu], ceiling=eager / t0 if eager else None))
    return rows


def print_table(rows, gpus=tuple(GPUS), markdown=False):
    head = ["what", "M×K×D", "path", "GB moved", "TFLOP", *[f"floor {g} ms" for g in gpus], f"eager/this ({gpus[0]})"]
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + " --- |" * len(head))
    else:
        print("  ".join(head))
    for r in rows:
        cells = [r["what"], f"{r['M']:,}×{r['K']}×{r['D']}", r["path"], f"{r['gb']:.1f}", f"{r['tflop']:.2f}",
                 *[f"{f:.2f}" for f in r["floors"]], f"{r['ceiling']:.1f}×" if r["ceiling"] else ""]
        print(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=None, help="MxKxD,... (default: the docs' sizes)")
    p.add_argument("--iters", type=int, default=ITERS)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--occupancy", nargs="?", const=RESOURCES, default=None, metavar="JSON",
                   help="also print occupancy from a tools/triton_compile_check.py --json file")
    p.add_argument("--compare", metavar="RUN_DIR", help="print measured vs predicted for the CSVs in RUN_DIR")
    args = p.parse_args(argv)
    if args.iters < 1:
        raise SystemExit(f"--iters must be >= 1, got {args.iters}")
    if args.compare:
        if not os.path.isdir(args.compare):
            raise SystemExit(f"--compare: {args.compare!r} is not a folder")
        lines = compare(args.compare)
        print("\n".join(lines))
        return lines
    sizes = SIZES
    if args.sizes:
        sizes = [(m, k, d) for _, m, k, d, _ in report_sizes(args.sizes)]
    rows = table_rows(sizes, args.iters)
    print_table(rows, markdown=args.markdown)
    if args.occupancy:
        print("\n".join(occupancy_lines(args.occupancy)))
    return rows


def report_sizes(text):
    from benchmarks._cli import parse_sizes
    return parse_sizes(text, {})


if __name__ == "__main__":
    main()
