"""Sinkhorn benchmark: our backends against the research-code style and outside peers.

    python benchmarks/sinkhorn.py                      # quick default (about a minute on 2 CPU cores)
    python benchmarks/sinkhorn.py --full               # the released recipe's sizes (docs/method.md)
    python benchmarks/sinkhorn.py --sizes ssv2-vits,4096x1000x128@0.1 --providers 'cpu*,research-*'

The problem: z (M, D) and prototypes C (K, D) with unit rows, scores S = z·Cᵀ, balanced Sinkhorn
with ε and a fixed number of iterations (no early stop), as in docs/sinkhorn.md. Providers:
- research-eager / research-compile: `research_style.research_sinkhorn` (exp domain, float32) and
  torch.compile of it, on S -> Q;
- pot-sinkhorn_log: POT's `ot.bregman.sinkhorn_log` (torch backend) with a = 1/M, b = 1/K,
  cost -S, reg = ε, numItermax = iters, stopThr = 0 -> Q = M·plan. Same iteration as ours
  (prototype update first, from zero potentials, plan from the potentials after the token
  update), but it also evaluates the marginal error on its first iteration (one extra pass over
  M×K) and materialises -S/ε and the plan;
- reference / cpu / triton / cuda: `sigma_kernels.sinkhorn(S, backend=...)` -> Q;
- <backend>-streaming: `sigma_kernels.sinkhorn_streaming(z, C, backend=...)` -> potentials,
  from the factors, never storing S in the fused backends (the score products are in the time);
- flash-sinkhorn (CUDA, when importable): its alternating solver on the equivalent
  squared-Euclidean problem (prototypes as sources, tokens as targets, half cost
  ½‖c−z‖² = 1 − z·c on unit vectors, blur ε): same plan, constants cancel -> potentials.

For each: median time of warm runs, peak extra memory, the max abs error of Q against a float64
log-domain Sinkhorn on the same z, C (for potential outputs, Q rebuilt from them in float64),
speed-up = research-eager median / median. Results: benchmarks/results/<device>-<date>-sinkhorn.csv
and .png.
"""
import argparse
import math
import os
import sys
import time

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _cli as cli  # noqa: E402
from benchmarks import _measure as measure  # noqa: E402
from benchmarks import _report as report  # noqa: E402
from benchmarks import _truth as truth64  # noqa: E402
from benchmarks import roofline  # noqa: E402
from benchmarks._driver import run_provider  # noqa: E402
from benchmarks.research_style import research_sinkhorn  # noqa: E402

# label: (M, K, D, ε) — docs/method.md sizes; "quick" is the masked tubes of a B=2 SSv2 batch (2 × 1408),
# small enough for a laptop CPU.
PRESETS = {
    "quick": (2816, 3000, 256, 0.05),
    "ssv2-b4": (5632, 3000, 256, 0.05),
    "ssv2-vits": (22528, 3000, 256, 0.05),
    "ssv2-vitb-b32": (45056, 3000, 256, 0.03),
    "k400-vitb": (56320, 3000, 768, 0.05),
}
FULL_SIZES = "ssv2-vits,ssv2-vitb-b32,k400-vitb"
BACKENDS = ("reference", "cpu", "triton", "cuda")
STREAMING_BACKENDS = ("reference", "cpu", "triton")  # the cuda backend has no streaming kernels
# research-eager first (the baseline of the ratios), research-compile last (slowest to set up, so
# a run cut short by a timeout still has the others).
PROVIDERS = (("research-eager",) + BACKENDS + tuple(f"{b}-streaming" for b in STREAMING_BACKENDS)
             + ("pot-sinkhorn_log", "flash-sinkhorn", "research-compile"))


def make_problem(m, k, d, device, seed=0):
    """Unit-row z (M, D) and prototypes (K, D), float32, with a few near-duplicates of prototypes
    among the tokens so that the assignment is not uniform noise."""
    g = torch.Generator().manual_seed(seed)
    c = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    z = torch.randn(m, d, generator=g)
    z[: m // 2] += 2.0 * c[torch.randint(0, k, (m // 2,), generator=g)] * math.sqrt(d) / 4
    z = torch.nn.functional.normalize(z, dim=1)
    return z.to(device), c.to(device)


def make_provider(name, z, c, scores, eps, iters):
    """(fn, finish, output, input dtype): fn() runs the provider; finish(out) turns its result into
    ("Q", Q) or ("uv", u, v) in the convention of docs/sinkhorn.md."""
    m, k = z.shape[0], c.shape[0]
    as_q = lambda out: ("Q", out)  # noqa: E731
    if name == "research-eager":
        return (lambda: research_sinkhorn(scores, eps, iters)), as_q, "Q", scores.dtype
    if name == "research-compile":
        compiled = torch.compile(research_sinkhorn, dynamic=False)
        return (lambda: compiled(scores, eps, iters)), as_q, "Q", scores.dtype
    if name == "pot-sinkhorn_log":
        try:
            import ot
        except ImportError as exc:
            raise cli.Unavailable(f"POT is not installed ({exc})") from exc
        cost = -scores.float()
        a = torch.full((m,), 1.0 / m, device=z.device)
        b = torch.full((k,), 1.0 / k, device=z.device)

        def run_pot():
            return ot.bregman.sinkhorn_log(a, b, cost, reg=eps, numItermax=iters, stopThr=0.0, warn=False) * m
        return run_pot, as_q, "Q", torch.float32
    if name in BACKENDS:
        import sigma_kernels
        cli.require_backend(name, z.device, scores.dtype)
        return (lambda: sigma_kernels.sinkhorn(scores, eps, iters, backend=name)), as_q, "Q", scores.dtype
    if name.endswith("-streaming"):
        import sigma_kernels
        backend = name[: -len("-streaming")]
        zd, cd = z.to(scores.dtype), c.to(scores.dtype)
        cli.require_backend(backend, z.device, zd.dtype)

        def run_streaming():
            return sinkhorn_streaming_uv(sigma_kernels, zd, cd, eps, iters, backend)
        return run_streaming, (lambda out: ("uv",) + out), "potentials", zd.dtype
    if name == "flash-sinkhorn":
        if z.device.type != "cuda":
            raise cli.Unavailable("flash-sinkhorn runs on CUDA tensors only")
        try:
            from flash_sinkhorn import SamplesLoss
        except ImportError as exc:
            raise cli.Unavailable(f"flash-sinkhorn is not installed ({exc})") from exc
        # Prototypes are the sources (updated first, like our v), tokens the targets; with
        # half_cost the cost is ½‖c−z‖² = 1 − z·c, so exp(−cost/ε) ∝ exp(S/ε).
        solver = SamplesLoss("sinkhorn", backend="alternating", use_epsilon_scaling=False, eps=eps,
                             n_iters=iters, potentials=True, debias=False, half_cost=True)
        zf, cf = z.float().contiguous(), c.float().contiguous()

        def finish_flash(out):
            return ("uv",) + flash_potentials_to_uv(out[0], out[1], eps)
        return (lambda: solver(cf, zf)), finish_flash, "potentials", torch.float32
    raise ValueError(f"unknown provider {name!r}")


def flash_potentials_to_uv(f, g, eps):
    """GeomLoss-convention potentials of the half-cost problem (prototypes as sources: f (K,),
    tokens as targets: g (M,)) -> our (u (M,), v (K,)), float64.

    Their plan is P_ki = (1/K)(1/M)·exp((f_k + g_i − (1 − S_ik))/ε) and ours
    Q_ik = M·P_ki = M·exp(S_ik/ε + u_i + v_k), so u = g/ε − log M and v = (f − 1)/ε − log K.
    """
    f, g = f.reshape(-1).double(), g.reshape(-1).double()
    return g / eps - math.log(g.shape[0]), (f - 1.0) / eps - math.log(f.shape[0])


def sinkhorn_streaming_uv(sigma_kernels, z, c, eps, iters, backend):
    res = sigma_kernels.sinkhorn_streaming(z, c, eps, iters, normalize=False, backend=backend)
    return res.u, res.v


def float64_truth(z, c, eps, n_iters):
    """The float64 Sinkhorn of S = z·cᵀ: (row_scores, u, v) with row_scores(i0, i1) -> float64
    S rows. S is stored when it fits a budget (2 GiB on CPU, 4 GiB on CUDA), else recomputed
    from float64 z and C per row block."""
    z64, c64 = z.double(), c.double()
    m, k = z.shape[0], c.shape[0]
    budget = (4 if z.device.type == "cuda" else 2) * 2**30
    if m * k * 8 <= budget:
        s64 = z64 @ c64.T
        u, v = truth64.float64_sinkhorn_stored(s64, eps, n_iters)
        return (lambda i0, i1: s64[i0:i1]), u, v
    row_scores = lambda i0, i1: z64[i0:i1] @ c64.T  # noqa: E731
    return (row_scores,) + truth64.float64_sinkhorn(row_scores, m, k, eps, n_iters)


def q_error(result, row_scores, m, u64, v64, eps, chunk=2048):
    """Max |Q − Q_float64| over all M rows, row block by row block. result: ("Q", Q) or ("uv", u, v)."""
    log_m = math.log(m)

    def blocks():
        for i0 in range(0, m, chunk):
            i1 = min(i0 + chunk, m)
            s = row_scores(i0, i1) / eps
            truth = torch.exp(s + u64[i0:i1, None] + v64[None, :] + log_m)
            if result[0] == "Q":
                yield result[1][i0:i1], truth
            else:
                u, v = result[1].double(), result[2].double()
                yield torch.exp(s + u[i0:i1, None] + v[None, :] + log_m), truth
    return truth64.max_abs_error(blocks())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help=f"run the docs/method.md sizes ({FULL_SIZES})")
    p.add_argument("--sizes", default=None,
                   help=f"comma list of presets {sorted(PRESETS)} or MxKxD[@eps] (default: quick)")
    p.add_argument("--epsilon", type=float, default=None, help="override ε of every size")
    p.add_argument("--iters", type=int, default=10, help="Sinkhorn iterations (default 10)")
    p.add_argument("--dtype", default="float32", help="dtype of the scores / factors our backends get")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--providers", default=None, help=f"comma list of glob patterns over {list(PROVIDERS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per provider (default 3 on CPU, 10 on CUDA)")
    p.add_argument("--out", default=report.RESULTS_DIR, help="output folder for the CSV and PNG")
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def run_size(log, device, repeats, providers, rates, label, m, k, d, eps, iters, dtype):
    """Every provider on one problem size (its inputs and float64 truth freed on return)."""
    z, c = make_problem(m, k, d, device)
    scores = (z @ c.T).to(dtype)
    t0 = time.perf_counter()
    row_scores, u64, v64 = float64_truth(z, c, eps, iters)
    print(f"\n== {label}: M={m} K={k} D={d} eps={eps} iters={iters} dtype={cli.dtype_name(dtype)} "
          f"(float64 truth {time.perf_counter() - t0:.1f} s)", flush=True)
    floor_ms = 1e3 * roofline.sinkhorn_floor_s(m, k, iters, rates)
    base = dict(size=label, M=m, K=k, D=d, eps=eps, iters=iters, targets="-", dtype=cli.dtype_name(dtype),
                floor_ms=floor_ms, read_gbps=rates["read_gbps"], gemm_gflops=rates["gemm_gflops"])

    def check(out, info):
        err = q_error(info["finish"](out), row_scores, m, u64, v64, eps)
        return {"max_err": err}, f"max err {err:.2e}"

    width = max(len(n) for n in providers)
    for i, name in enumerate(providers, 1):
        def setup(name=name):
            fn, finish, output, in_dtype = make_provider(name, z, c, scores, eps, iters)
            what = "max |Q - Q_float64|" + (" (Q from potentials)" if output == "potentials" else "")
            return fn, {"finish": finish, "fields": dict(dtype=cli.dtype_name(in_dtype), output=output, err_what=what)}
        run_provider(log, device, repeats, f"[{i}/{len(providers)}] {name:<{width}}", name, base, ("size",), setup,
                     check)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = cli.parse_dtype(args.dtype)
    sizes = cli.parse_sizes(args.sizes or (FULL_SIZES if args.full else "quick"), PRESETS)
    providers = cli.select(PROVIDERS, args.providers)
    if not providers:
        raise SystemExit(f"--providers {args.providers!r} matches none of {list(PROVIDERS)}")
    repeats = args.repeats or (10 if device.type == "cuda" else 3)
    if repeats < 1 or args.iters < 1:
        raise SystemExit("--repeats and --iters must be >= 1")

    meta = report.run_metadata("sinkhorn", device)
    log = report.CsvLog(args.out, meta)
    print(report.describe(meta), flush=True)
    print(f"memory method: {measure.mem_method(device)}; repeats {repeats}; writing {log.path}", flush=True)
    rates = roofline.measure(device)
    print(f"floors: read {rates['read_gbps']:.1f} GB/s, fp32 GEMM {rates['gemm_gflops']:.0f} GFLOP/s "
          f"(load {roofline.load_average()})", flush=True)

    for label, m, k, d, eps in sizes:
        eps = args.epsilon if args.epsilon is not None else (eps if eps is not None else 0.05)
        run_size(log, device, repeats, providers, rates, label, m, k, d, eps, args.iters, dtype)

    columns = [("provider", "provider"), ("size", "size"), ("dtype", "dtype"), ("output", "output"),
               ("median ms", "median_ms"), ("speed-up", "speedup"), ("vs compile", "speedup_vs_compile"),
               ("peak MiB", "peak_mem_mb"), ("mem/research", "mem_vs_research"), ("of floor", "floor_frac"),
               ("max err", "max_err"),
               ("status", "status")]
    print("\n" + report.summary(log.rows, columns))
    print(f"\nCSV: {log.path}")
    if not args.no_plot:
        png = report.plot_bars(log.rows, log.png_path, report.describe(meta), "provider", "size")
        if png:
            print(f"PNG: {png}")
    return log.path


if __name__ == "__main__":
    main()
