"""The provider loop shared by sinkhorn.py and loss.py: set up, time, check and log one provider."""
import torch

from benchmarks import roofline
from benchmarks._cli import Unavailable
from benchmarks._measure import bench
from benchmarks._report import fill_ratios, record_failure, record_skip


def run_provider(log, device, repeats, prefix, name, fields, ratio_keys, setup, check):
    """One benchmark row for provider `name`.

    setup() -> (fn, info): fn() is the timed call; info["fields"] (optional) adds CSV fields of
    this provider. check(out, info) -> (CSV fields, text): the accuracy of fn's output against the
    float64 truth. `fields` holds the row's common fields; with floor_ms among them the row gets
    floor_frac = floor_ms / median_ms. A provider that cannot run here (Unavailable) is logged as
    skipped and one that raises as failed: a failing peer never stops the others. The speed-up and
    memory ratios of every row are refreshed (matched on ratio_keys) and the CSV rewritten.
    Returns the logged row, or None when the provider did not run.
    """
    try:
        fn, info = setup()
    except Unavailable as exc:
        record_skip(log, prefix, exc, provider=name, **fields)
        return None
    except Exception as exc:  # e.g. a peer whose API changed
        record_failure(log, prefix, "failed to set up", exc, provider=name, **fields)
        return None
    fields = {**fields, **info.get("fields", {})}
    try:
        r = bench(fn, device, repeats)
        extra, text = check(r.pop("out"), info)
    except Exception as exc:
        record_failure(log, prefix, "failed", exc, provider=name, **fields)
        return None
    finally:
        fn = info = None
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    if "floor_ms" in fields:
        extra["floor_frac"] = fields["floor_ms"] / r["median_ms"]
        text += f"  floor {extra['floor_frac']:.2f}"
    peak = r["peak_mem_mb"] if r["peak_mem_mb"] is not None else float("nan")
    print(f"{prefix} median {r['median_ms']:10.2f} ms  (first {r['first_ms']:.0f} ms)  peak {peak:9.1f} MiB  {text}",
          flush=True)
    row = log.add(provider=name, repeats=repeats, status="ok", load=roofline.load_average(), **fields, **extra, **r)
    fill_ratios(log.rows, ratio_keys)
    log.rewrite()
    return row
