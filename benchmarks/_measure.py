"""Timing and peak memory of one benchmark call.

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
import os
import statistics
import threading
import time

import torch


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
