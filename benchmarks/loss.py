"""Whole-loss benchmark: the SIGMA loss (both directions, forward + backward), ours vs research style.

    python benchmarks/loss.py                          # quick default
    python benchmarks/loss.py --full                   # the released recipe's sizes (docs/method.md)
    python benchmarks/loss.py --sizes ssv2-vits --targets hard --providers 'research-eager,cpu*'

One step = L = CE(S_v/τ, target(Q_p)) + CE(S_p/τ, target(Q_v)) (docs/method.md) and the gradients
dL/dz_v, dL/dz_p, dL/dC. Inputs z_v, z_p (M, D) (normalised inside), prototypes C (K, D) with unit
rows. Providers:
- research-eager / research-compile: `research_style.research_loss` (materialised scores,
  exp-domain Sinkhorn, F.cross_entropy, float32) and torch.compile of it;
- reference / cpu / triton: the public sigma_kernels ops with that backend: `sinkhorn_streaming`
  per branch (potentials from (z, C), no grad) and `prototype_cross_entropy_sinkhorn` per term
  (targets recomputed from the other branch's z, C and potentials tile by tile; prototypes
  detached in the video term). In the fused backends no M×K array is stored;
- <backend>-assign (hard targets only): `sinkhorn_assign_streaming` per branch, then
  `prototype_cross_entropy` against the index targets;
- SinkhornSwapLoss: `sigma.losses.SinkhornSwapLoss` as users run it (defaults: backend "auto",
  diagnostics on, streaming "auto"), when importable; SinkhornSwapLoss-nostats: the same with
  compute_stats=False; SinkhornSwapLoss-stored / -streaming: the defaults with streaming=False /
  True, whatever the memory budget would choose.

Reported: median time of warm steps, peak extra memory, |L − L_float64| and the max abs error of
the gradients against a float64 log-domain computation of the same loss (with hard targets, a
near-tie that rounds differently flips one token's target: a visible but legitimate gradient
difference), speed-up and memory relative to research-eager with the same targets.
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _cli as cli  # noqa: E402
from benchmarks import _measure as measure  # noqa: E402
from benchmarks import _report as report  # noqa: E402
from benchmarks import _truth as truth64  # noqa: E402
from benchmarks import roofline  # noqa: E402
from benchmarks._driver import run_provider  # noqa: E402
from benchmarks.research_style import research_loss  # noqa: E402

# label: (M, K, D, ε) — docs/method.md sizes; "quick" is small enough for a laptop CPU.
PRESETS = {
    "quick": (2048, 3000, 256, 0.05),
    "ssv2-vits": (22528, 3000, 256, 0.05),
    "ssv2-vitb": (22528, 3000, 768, 0.03),
    "ssv2-vitb-b32": (45056, 3000, 256, 0.03),
}
FULL_SIZES = "ssv2-vits,ssv2-vitb"
BACKENDS = ("reference", "cpu", "triton")
# research-eager first (the baseline of the ratios), research-compile last (slowest to set up).
PROVIDERS = (("research-eager",) + BACKENDS + tuple(f"{b}-assign" for b in BACKENDS)
             + ("SinkhornSwapLoss", "SinkhornSwapLoss-nostats", "SinkhornSwapLoss-stored",
                "SinkhornSwapLoss-streaming", "research-compile"))


def make_problem(m, k, d, device, dtype, seed=0):
    """z_v, z_p (M, D) leaves in `dtype`, prototypes C (K, D) float32 leaf with unit rows; the two
    branches are correlated (z_p = z_v + noise) and half the tokens lie near a prototype."""
    g = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(k, d, generator=g), dim=1)
    z_v = torch.randn(m, d, generator=g)
    z_v[: m // 2] += c[torch.randint(0, k, (m // 2,), generator=g)] * math.sqrt(d) / 2
    z_p = z_v + 0.5 * torch.randn(m, d, generator=g)
    leaf = lambda t, dt: t.to(device=device, dtype=dt).requires_grad_()  # noqa: E731
    return leaf(z_v, dtype), leaf(z_p, dtype), leaf(c, torch.float32)


def ops_loss(z_v, z_p, c, eps, iters, tau, targets, backend):
    """The SIGMA loss from the public sigma_kernels ops with one backend (docs/method.md)."""
    import sigma_kernels as sk
    res_v = sk.sinkhorn_streaming(z_v, c, eps, iters, backend=backend)
    res_p = sk.sinkhorn_streaming(z_p, c, eps, iters, backend=backend)
    video = sk.prototype_cross_entropy_sinkhorn(z_v, c.detach(), z_p, c, res_p.v, eps, tau, targets=targets,
                                           backend=backend)
    proj = sk.prototype_cross_entropy_sinkhorn(z_p, c, z_v, c, res_v.v, eps, tau, targets=targets, backend=backend)
    return video + proj


def ops_assign_loss(z_v, z_p, c, eps, iters, tau, backend):
    """Hard-target variant: index targets from `sinkhorn_assign_streaming`, then plain swapped CE."""
    import sigma_kernels as sk
    t_v = sk.sinkhorn_assign_streaming(z_v, c, eps, iters, backend=backend)
    t_p = sk.sinkhorn_assign_streaming(z_p, c, eps, iters, backend=backend)
    return (sk.prototype_cross_entropy(z_v, c.detach(), t_p, tau, backend=backend)
            + sk.prototype_cross_entropy(z_p, c, t_v, tau, backend=backend))


def float64_loss_and_grads(z_v, z_p, c, eps, iters, tau, targets, cache=None):
    """The loss and (dz_v, dz_p, dC) in float64, log-domain Sinkhorn (truth64.float64_sinkhorn).

    cache: optional dict keeping the two branches' potentials v between calls on the same inputs
    (hard and soft targets share them)."""
    cache = {} if cache is None else cache
    zv, zp, c64 = (t.detach().double().requires_grad_() for t in (z_v, z_p, c))
    s_v = F.normalize(zv, dim=1) @ c64.detach().T
    s_p = F.normalize(zp, dim=1) @ c64.T
    with torch.no_grad():
        target = {}
        for tag, s in (("v", s_v), ("p", s_p)):
            if tag not in cache:
                cache[tag] = truth64.float64_sinkhorn_stored(s.detach(), eps, iters)[1]
            v = cache[tag]
            logits = s / eps + v
            target[tag] = logits.argmax(dim=1) if targets == "hard" else torch.softmax(logits, dim=1)
            del logits
    loss = F.cross_entropy(s_v / tau, target["p"]) + F.cross_entropy(s_p / tau, target["v"])
    grads = torch.autograd.grad(loss, (zv, zp, c64))
    return loss.detach(), grads


def make_provider(name, z_v, z_p, c, eps, iters, tau, targets):
    """(loss_fn, grad_inputs, output note); loss_fn() -> scalar loss of (z_v, z_p, c)."""
    if name == "research-eager":
        return (lambda: research_loss(z_v, z_p, c, eps, iters, tau, targets)), (z_v, z_p, c), "materialised"
    if name == "research-compile":
        compiled = torch.compile(research_loss, dynamic=False)
        return (lambda: compiled(z_v, z_p, c, eps, iters, tau, targets)), (z_v, z_p, c), "materialised"
    if name in BACKENDS or name.endswith("-assign"):
        backend = name[: -len("-assign")] if name.endswith("-assign") else name
        cli.require_backend(backend, z_v.device, z_v.dtype)
        if name.endswith("-assign"):
            if targets != "hard":
                raise ValueError(f"{name} computes index (hard) targets only")
            return ((lambda: ops_assign_loss(z_v, z_p, c, eps, iters, tau, backend)), (z_v, z_p, c),
                    "streaming, index targets")
        return ((lambda: ops_loss(z_v, z_p, c, eps, iters, tau, targets, backend)), (z_v, z_p, c),
                "streaming, targets on the fly")
    if name.startswith("SinkhornSwapLoss"):
        try:
            from sigma.losses import SinkhornSwapLoss
            from sigma_kernels import resolve_backend
        except Exception as exc:
            raise cli.Unavailable(
                f"sigma.losses.SinkhornSwapLoss is not importable ({type(exc).__name__}: {exc})") from exc
        k, d = c.shape
        module = SinkhornSwapLoss(num_prototypes=k, dim=d, epsilon=eps, sinkhorn_iterations=iters, temperature=tau,
                                  targets=targets, compute_stats=name != "SinkhornSwapLoss-nostats",
                                  streaming={"SinkhornSwapLoss-stored": False,
                                             "SinkhornSwapLoss-streaming": True}.get(name, "auto")).to(c.device)
        with torch.no_grad():
            module.prototypes.copy_(c)
        resolved = resolve_backend("auto", z_v.device, torch.float32)
        streams = module._use_streaming(z_v.shape[0], z_v.device)
        return ((lambda: module(z_v, z_p)), (z_v, z_p, module.prototypes),
                f"backend auto -> {resolved}, {'streaming' if streams else 'stored scores'}, "
                f"stats {'on' if module.compute_stats else 'off'}")
    raise ValueError(f"unknown provider {name!r}")


def step_fn(loss_fn, inputs):
    """One training step's loss work: forward and the three gradients."""
    def step():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, inputs)
        return loss.detach(), grads
    return step


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help=f"run the docs/method.md sizes ({FULL_SIZES})")
    p.add_argument("--sizes", default=None,
                   help=f"comma list of presets {sorted(PRESETS)} or MxKxD[@eps] (default: quick)")
    p.add_argument("--epsilon", type=float, default=None, help="override ε of every size")
    p.add_argument("--iters", type=int, default=10, help="Sinkhorn iterations (default 10)")
    p.add_argument("--temperature", type=float, default=0.1, help="τ (default 0.1)")
    p.add_argument("--targets", default="hard,soft", help="hard, soft or hard,soft (default)")
    p.add_argument("--dtype", default="float32", help="dtype of z_v, z_p (prototypes stay float32)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--providers", default=None, help=f"comma list of glob patterns over {list(PROVIDERS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per provider (default 3 on CPU, 10 on CUDA)")
    p.add_argument("--no-check", action="store_true", help="skip the float64 accuracy check (saves memory)")
    p.add_argument("--out", default=report.RESULTS_DIR, help="output folder for the CSV and PNG")
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def run_size(log, device, repeats, providers, rates, label, m, k, d, eps, iters, tau, targets_list, dtype, check):
    """Every provider and target kind on one problem size (inputs and truth freed on return)."""
    z_v, z_p, c = make_problem(m, k, d, device, dtype)
    truth_cache = {}
    floor_ms = 1e3 * roofline.loss_floor_s(m, k, d, iters, rates)
    for targets in targets_list:
        truth = None
        note = ""
        if check:
            t0 = time.perf_counter()
            truth = float64_loss_and_grads(z_v, z_p, c, eps, iters, tau, targets, truth_cache)
            note = f" (float64 truth {time.perf_counter() - t0:.1f} s, L = {float(truth[0]):.4f})"
        print(f"\n== {label}: M={m} K={k} D={d} eps={eps} iters={iters} tau={tau} targets={targets} "
              f"dtype={cli.dtype_name(dtype)}{note}", flush=True)
        base = dict(size=label, M=m, K=k, D=d, eps=eps, iters=iters, tau=tau, targets=targets,
                    dtype=cli.dtype_name(dtype), floor_ms=floor_ms, read_gbps=rates["read_gbps"],
                    gemm_gflops=rates["gemm_gflops"])

        def check_out(out, info, truth=truth):
            loss, grads = out
            err = grad_err = float("nan")
            if truth is not None:
                err = truth64.max_abs_error([(loss, truth[0])])
                grad_err = truth64.max_abs_error(zip(grads, truth[1]))
            what = "|L - L_float64|; grad_err: max |grad - grad_float64|" if truth else ""
            text = f"|dL| {err:.1e}  max|dgrad| {grad_err:.1e}"
            return {"max_err": err, "grad_err": grad_err, "err_what": what}, text

        width = max(len(n) for n in providers)
        for i, name in enumerate(providers, 1):
            prefix = f"[{i}/{len(providers)}] {name:<{width}} {targets:<4}"
            if name.endswith("-assign") and targets != "hard":
                print(f"{prefix} not run: the -assign providers take hard (index) targets only", flush=True)
                continue

            def setup(name=name, targets=targets):
                loss_fn, inputs, output = make_provider(name, z_v, z_p, c, eps, iters, tau, targets)
                return step_fn(loss_fn, inputs), {"fields": {"output": output}}
            run_provider(log, device, repeats, prefix, name, base, ("size", "targets"), setup, check_out)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = cli.parse_dtype(args.dtype)
    sizes = cli.parse_sizes(args.sizes or (FULL_SIZES if args.full else "quick"), PRESETS)
    targets_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets_list or any(t not in ("hard", "soft") for t in targets_list):
        raise SystemExit(f"--targets must be hard, soft or hard,soft, got {args.targets!r}")
    providers = cli.select(PROVIDERS, args.providers)
    if not providers:
        raise SystemExit(f"--providers {args.providers!r} matches none of {list(PROVIDERS)}")
    repeats = args.repeats or (10 if device.type == "cuda" else 3)
    if repeats < 1 or args.iters < 1:
        raise SystemExit("--repeats and --iters must be >= 1")

    meta = report.run_metadata("loss", device)
    log = report.CsvLog(args.out, meta)
    print(report.describe(meta), flush=True)
    print(f"memory method: {measure.mem_method(device)}; repeats {repeats}; writing {log.path}", flush=True)
    tau = args.temperature
    rates = roofline.measure(device)
    print(f"floors: read {rates['read_gbps']:.1f} GB/s, fp32 GEMM {rates['gemm_gflops']:.0f} GFLOP/s "
          f"(load {roofline.load_average()})", flush=True)

    for label, m, k, d, eps in sizes:
        eps = args.epsilon if args.epsilon is not None else (eps if eps is not None else 0.05)
        run_size(log, device, repeats, providers, rates, label, m, k, d, eps, args.iters, tau, targets_list, dtype,
                 check=not args.no_check)

    columns = [("provider", "provider"), ("size", "size"), ("targets", "targets"), ("median ms", "median_ms"),
               ("speed-up", "speedup"), ("vs compile", "speedup_vs_compile"), ("peak MiB", "peak_mem_mb"),
               ("mem/research", "mem_vs_research"), ("of floor", "floor_frac"),
               ("|dL|", "max_err"), ("max|dgrad|", "grad_err"), ("status", "status")]
    print("\n" + report.summary(log.rows, columns))
    print(f"\nCSV: {log.path}")
    if not args.no_plot:
        for r in log.rows:
            r["_series"] = f"{r['size']} {r['targets']}"
        png = report.plot_bars(log.rows, log.png_path, report.describe(meta), "provider", "_series")
        if png:
            print(f"PNG: {png}")
    return log.path


if __name__ == "__main__":
    main()
