"""This machine's floors, measured in the same run as the benchmarks, and the floor of a problem.

    python benchmarks/roofline.py            # prints read bandwidth and fp32 GEMM rate

Two rates, each the best of a few short runs with the current torch thread count:
- read bandwidth: a sum over a buffer far larger than the caches (torch.sum streams it once);
- fp32 GEMM rate: (M, D) × (D, K) products of the benchmarks' shape (2·M·D·K flops each).

The floor of a problem is the time the minimal algorithm needs at those rates, the same for every
provider of the problem (see docs/performance.md):
- Sinkhorn, scores S (M, K) → Q, n iterations: read S once per iteration and write Q once,
  (n + 1)·M·K·4 bytes at the read bandwidth;
- the loss, forward + backward: 5 GEMMs of M×K×D (the two score matrices, then dz_v, dz_p and
  dC) and the two solves (2·n reads of an M×K fp32 matrix).
`floor_frac` = floor / measured time (1.0 = at the floor).
"""
import argparse
import os
import sys
import time

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _best(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def read_bandwidth(device, mib=512, repeats=5):
    """Bytes per second read by torch.sum over a `mib` MiB fp32 buffer (best of `repeats`)."""
    x = torch.ones(mib * 2**20 // 4, device=device)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def run():
        x.sum()
        sync()
    t = _best(run, repeats)
    return x.numel() * 4 / t


def gemm_rate(device, m=4096, k=3000, d=256, repeats=5):
    """fp32 flops per second of (m, d) @ (d, k) (best of `repeats`); TF32 stays as configured."""
    a = torch.randn(m, d, device=device)
    b = torch.randn(d, k, device=device)
    sync = torch.cuda.synchronize if a.device.type == "cuda" else (lambda: None)

    def run():
        torch.mm(a, b)
        sync()
    t = _best(run, repeats)
    return 2.0 * m * d * k / t


def measure(device, mib=512, repeats=5):
    """{'read_gbps': ..., 'gemm_gflops': ...} of this machine now."""
    return {"read_gbps": read_bandwidth(device, mib, repeats) / 1e9,
            "gemm_gflops": gemm_rate(device, repeats=repeats) / 1e9}


def sinkhorn_floor_s(m, k, iters, rates):
    """Seconds for (iters + 1) passes over an M×K fp32 matrix at the measured read bandwidth."""
    return (iters + 1) * m * k * 4 / (rates["read_gbps"] * 1e9)


def loss_floor_s(m, k, d, iters, rates):
    """Seconds for 5 GEMMs of M×K×D at the GEMM rate plus 2·iters reads of an M×K fp32 matrix."""
    return 5 * 2.0 * m * k * d / (rates["gemm_gflops"] * 1e9) + 2 * iters * m * k * 4 / (rates["read_gbps"] * 1e9)


def load_average():
    """The 1-minute load average ('' where unknown): the benchmarks record how busy the box was."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return ""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mib", type=int, default=512, help="size of the read-bandwidth buffer (MiB)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.mib < 1 or args.repeats < 1:
        raise SystemExit(f"--mib and --repeats must be >= 1, got {args.mib} and {args.repeats}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rates = measure(device, args.mib, args.repeats)
    print(f"{device}: read {rates['read_gbps']:.1f} GB/s, fp32 GEMM {rates['gemm_gflops']:.0f} GFLOP/s "
          f"({torch.get_num_threads()} threads, load {load_average()})")
    return rates


if __name__ == "__main__":
    main()
