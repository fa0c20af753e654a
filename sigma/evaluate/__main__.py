"""python -m sigma.evaluate {knn,linear,finetune,segment,visualize} --checkpoint CKPT --data PATH --output-dir DIR

Each task writes DIR/<task>.json (atomically) and prints its headline numbers. See docs/evaluation.md.
"""
import argparse
import json
import sys


def _common(p, data_help):
    p.add_argument("--checkpoint", required=True,
                   help="encoder weights: a pretraining checkpoint (.pt), an exported .safetensors, or a "
                        "VideoMAE .pth")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--output-dir", required=True, help="folder for the result JSON (and pictures/checkpoints)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")


def _labelled(p):
    p.add_argument("--train-list", default=None, help="train list (default DATA/train.txt)")
    p.add_argument("--val-list", default=None, help="val list (default DATA/val.txt)")
    p.add_argument("--label-column", type=int, default=0, help="which label of `path label [label ...]` (default 0)")
    p.add_argument("--classes", default=None, help="classes.json (default: next to the train list, if any)")
    p.add_argument("--sampling-rate", type=int, default=4, help="frame stride of a clip (4 Kinetics, 2 SSv2)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"], help="autocast on CUDA")
    p.add_argument("--no-progress", action="store_true")


def _frozen_features(p):
    """Options of the probes on frozen pooled features (knn, linear)."""
    p.add_argument("--views", type=int, nargs=2, default=(1, 1), metavar=("CLIPS", "CROPS"))
    p.add_argument("--batch-size", type=int, default=8)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m sigma.evaluate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="task", required=True)
    lists_help = "folder holding train.txt and val.txt (`path label [label ...]` per line), e.g. the synthetic set"

    p = sub.add_parser("knn", help="k-NN classification on frozen pooled features")
    _common(p, lists_help)
    _labelled(p)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--unweighted", action="store_true", help="plain majority vote instead of exp(sim/T) weights")
    _frozen_features(p)

    p = sub.add_parser("linear", help="linear probe on frozen pooled features")
    _common(p, lists_help)
    _labelled(p)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--probe-batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    _frozen_features(p)

    p = sub.add_parser("finetune", help="full fine-tuning (paper recipe) + multi-view test")
    _common(p, lists_help)
    _labelled(p)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8, help="per process (even with mixup/cutmix)")
    p.add_argument("--base-lr", type=float, default=1e-3, help="lr = base_lr · global batch / 256")
    p.add_argument("--min-lr", type=float, default=1e-6)
    p.add_argument("--warmup-epochs", type=float, default=5)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--layer-decay", type=float, default=0.75)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--mixup", type=float, default=0.8)
    p.add_argument("--cutmix", type=float, default=1.0)
    p.add_argument("--randaug", default="rand-m9-n2-mstd0.5-inc1", help="timm RandAugment string; 'none' disables")
    p.add_argument("--no-flip", action="store_true", help="no horizontal flip (SSv2)")
    p.add_argument("--test-views", type=int, nargs=2, default=(5, 3), metavar=("CLIPS", "CROPS"))
    p.add_argument("--clip-grad", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")
    p.add_argument("--save-every", type=int, default=None, help="also checkpoint every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None, help="'auto' (DIR/checkpoints/finetune-last.pt if present) or a path")

    p = sub.add_parser("segment", help="unsupervised video object segmentation (clustering / overclustering mIoU)")
    _common(p, "DAVIS-layout folder: JPEGImages/<seq>/*.jpg and Annotations/<seq>/*.png")
    p.add_argument("--split", default=None, help="use ImageSets/2017/<split>.txt (default: every sequence)")
    p.add_argument("--frame-stride", type=int, default=1)
    p.add_argument("--max-clips", type=int, default=None, help="clips per sequence (default: all)")
    p.add_argument("--frame-mode", default="resize", choices=["resize", "center_crop"])
    p.add_argument("--size", type=int, default=28, help="side of the maps that are scored (paper: 28)")
    p.add_argument("--overclustering-k", type=int, default=6)
    p.add_argument("--background", default="class", choices=["class", "ignore"])
    p.add_argument("--reduction", default="sequence", choices=["sequence", "clip", "pooled"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-init", type=int, default=10, help="k-means restarts")
    p.add_argument("--l2-normalize", action="store_true", help="unit-normalise the features before k-means")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"])
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("visualize", help="cluster maps, prototype assignments and training curves")
    _common(p, "a video file (or a list/folder: its first --max-videos videos)")
    p.add_argument("--metrics", default=None, help="pretraining metrics.csv (default: the checkpoint run's)")
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--sampling-rate", type=int, default=4)
    p.add_argument("--max-videos", type=int, default=4)
    return parser


def run(args):
    from sigma import evaluate as ev

    common = dict(checkpoint=args.checkpoint, data=args.data, output_dir=args.output_dir, device=args.device)
    if args.task in ("knn", "linear", "finetune"):
        common.update(train_list=args.train_list, val_list=args.val_list, label_column=args.label_column,
                      classes=args.classes, sampling_rate=args.sampling_rate, num_workers=args.num_workers,
                      amp=args.amp, progress=not args.no_progress)
    if args.task == "knn":
        return ev.knn(**common, k=args.k, temperature=args.temperature, weighted=not args.unweighted,
                      num_clips=args.views[0], num_crops=args.views[1], batch_size=args.batch_size)
    if args.task == "linear":
        return ev.linear(**common, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                         probe_batch_size=args.probe_batch_size, seed=args.seed, num_clips=args.views[0],
                         num_crops=args.views[1], batch_size=args.batch_size)
    if args.task == "finetune":
        return ev.finetune(**common, epochs=args.epochs, batch_size=args.batch_size, base_lr=args.base_lr,
                           min_lr=args.min_lr, warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay,
                           layer_decay=args.layer_decay, drop_path=args.drop_path,
                           label_smoothing=args.label_smoothing, mixup=args.mixup, cutmix=args.cutmix,
                           randaug=None if args.randaug.lower() == "none" else args.randaug, flip=not args.no_flip,
                           test_clips=args.test_views[0], test_crops=args.test_views[1], clip_grad=args.clip_grad,
                           max_steps=args.max_steps, save_every=args.save_every, seed=args.seed, resume=args.resume)
    if args.task == "segment":
        return ev.segment(**common, split=args.split, frame_stride=args.frame_stride, max_clips=args.max_clips,
                          frame_mode=args.frame_mode, size=args.size, overclustering_k=args.overclustering_k,
                          background=args.background, reduction=args.reduction, seed=args.seed,
                          n_init=args.n_init, l2_normalize=args.l2_normalize, amp=args.amp,
                          progress=not args.no_progress)
    return ev.visualize(**common, metrics=args.metrics, k=args.k, seed=args.seed, alpha=args.alpha,
                        sampling_rate=args.sampling_rate, max_videos=args.max_videos)


HEADLINE = {"knn": ("top1", "top5", "mean_class_accuracy"), "linear": ("top1", "top5", "mean_class_accuracy"),
            "finetune": ("top1", "top5", "mean_class_accuracy"), "segment": ("miou_clustering", "miou_overclustering")}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"python -m sigma.evaluate {args.task}: error: {exc}", file=sys.stderr)
        return 2
    keys = HEADLINE.get(args.task)
    if keys:
        summary = {k: result.get(k) for k in keys}
    else:  # visualize: every file it wrote (per clip a PNG and a GIF; the training curves if any)
        files = [f for c in result["clips"] for f in (c.get("png"), c.get("gif")) if f]
        if result.get("training_curves"):
            files.append(result["training_curves"]["png"])
        summary = {"files": files}
    print(json.dumps({"task": args.task, **summary, "output": f"{args.output_dir}/{args.task}.json"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
