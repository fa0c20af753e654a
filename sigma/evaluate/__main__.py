"""python -m sigma.evaluate {knn,linear,finetune,segment,visualize} --checkpoint CKPT --data PATH --output-dir DIR

Each task writes DIR/<task>.json (atomically) and prints its headline numbers. A task's settings are
the keys of its dataclass in `sigma.evaluate.config` (the Python function takes its defaults from the
same class): set one with its flag (`--batch-size 4`) or as `batch_size=4` anywhere on the line.
`--config FILE` reads a YAML file of keys first, flags come next, `key=value` overrides last;
`--print-config` prints the resolved settings. See docs/evaluation.md.
"""
import argparse
import dataclasses
import json
import sys
import typing

from sigma.engine.config import (
    REQUIRED,
    ConfigError,
    check_environment,
    compose,
    default_of,
    dump_config,
    expected,
    inherit_chain,
    override_layer,
    parse_override,
    schema_fields,
    unwrap_optional,
)

from .config import TASKS

PROG = "python -m sigma.evaluate"
HELP = {"knn": "k-NN classification on frozen pooled features",
        "linear": "linear (pooling=mean) or attentive (pooling=attentive) probe on frozen features",
        "finetune": "full fine-tuning (paper recipe) + multi-view test",
        "segment": "unsupervised video object segmentation (clustering / overclustering mIoU)",
        "visualize": "cluster maps, prototype assignments and training curves"}
# Flags that are not plain `--<key>`: views as one pair, and the README's --unweighted.
PAIRS = {"--views": ("num_clips", "num_crops"), "--test-views": ("test_clips", "test_crops")}
SWITCHES = {"--unweighted": ("weighted", False)}
# Each task must be given these (as flags or key=value) unless it only prints its config.
REQUIRED_KEYS = ("checkpoint", "data", "output_dir")


class _Set(argparse.Action):
    """Appends (option, key, value) to `args.settings`, in command-line order."""

    def __init__(self, option_strings, dest, keys=(), fixed=None, raw=(), names=(), **kw):
        super().__init__(option_strings, dest, **kw)
        self.keys, self.fixed, self.raw, self.names = keys, fixed, raw, names

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest) or [])
        if self.fixed is not None:
            items.append((option_string, self.keys[0], self.fixed))
        else:
            values = values if isinstance(values, list) else [values]
            for key, text in zip(self.keys, values):
                # a path or name stays the text typed; numbers, bools and lists are read as YAML
                items.append((option_string, key, text if key in self.raw else _typed(key, text, self.names)))
        setattr(namespace, self.dest, items)


def _name_lists(schema):
    """The keys of the schema typed as a list of strings (segment's sequences)."""
    inner = {n: unwrap_optional(tp)[0] for n, (tp, _) in schema_fields(schema).items()}
    return tuple(n for n, tp in inner.items() if typing.get_origin(tp) is list and typing.get_args(tp) == (str,))


def _typed(key, text, names):
    """The value of `key` typed as `text`: read as YAML, except that a list of names (`names`) may
    also be given bare, `a` or `a,b` (each name kept as typed, so `00003` stays a string); YAML's
    `[a, b]` and null keep their meaning."""
    bare = text.strip()
    if key in names and not bare.startswith("[") and bare not in ("null", "~"):
        return [n.strip() for n in bare.split(",") if n.strip()]
    return parse_override(f"{key}={text}")[1]


def task_parser(task):
    """The parser of one task: a flag per key of its dataclass, the aliases, key=value overrides."""
    schema = TASKS[task]
    p = argparse.ArgumentParser(
        prog=f"{PROG} {task}", description=HELP[task],
        epilog=f"Every flag is also a dotted override, e.g. batch_size=4 (see --print-config). Schema: "
               f"sigma.evaluate.config.{schema.__name__}.")
    p.add_argument("--config", default=None, help="a YAML file of this task's keys (e.g. written by --print-config), "
                                                  "read before the flags and overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    raw = tuple(n for n, (tp, _) in schema_fields(schema).items() if unwrap_optional(tp)[0] is str)
    names = _name_lists(schema)
    for name, (tp, meta) in schema_fields(schema).items():
        default, flag = default_of(fields[name]), "--" + name.replace("_", "-")
        shown = "required" if default == REQUIRED else f"default {default}"
        text = f"{meta.get('help') or name} ({expected(tp, meta)}; {shown})"
        if tp is bool:
            p.add_argument(f"--no-{flag[2:]}" if default else flag, action=_Set, dest="settings", nargs=0,
                           keys=(name,), fixed=not default, help=text)
        else:
            p.add_argument(flag, action=_Set, dest="settings", keys=(name,), raw=raw, names=names,
                           metavar=name.upper(), help=text)
    for flag, keys in PAIRS.items():
        if keys[0] in fields:
            p.add_argument(flag, action=_Set, dest="settings", nargs=2, keys=keys, metavar=("CLIPS", "CROPS"),
                           help=f"{keys[0]} and {keys[1]}")
    for flag, (key, value) in SWITCHES.items():
        if key in fields:
            p.add_argument(flag, action=_Set, dest="settings", nargs=0, keys=(key,), fixed=value,
                           help=f"{key}={str(value).lower()}")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings as dotted keys, anywhere on the line")
    return p


def build_parser():
    """The top-level parser (task names and help); each task parses its own options (`task_parser`)."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog="tasks: " + "; ".join(f"{t}: {h}" for t, h in HELP.items())
                                       + f". `{PROG} TASK --help` lists a task's options.")
    p.add_argument("task", choices=list(TASKS))
    return p


def resolve(task, args):
    """The task's settings as a plain dict: dataclass defaults <- --config <- flags <- overrides."""
    layers = inherit_chain(args.config) if args.config else []
    layers += [(option, override_layer(key, value)) for option, key, value in args.settings or []]
    names = _name_lists(TASKS[task])
    for item in args.overrides:
        key, value = parse_override(item)
        layers.append(("override", override_layer(key, _typed(key, item.split("=", 1)[1], names))))
    settings = compose(TASKS[task], layers)
    if isinstance(settings.get("randaug"), str) and settings["randaug"].lower() == "none":
        settings["randaug"] = None  # the CLI's spelling of "no RandAugment"
    return settings


HEADLINE = {"knn": ("top1", "top5", "mean_class_accuracy"), "linear": ("top1", "top5", "mean_class_accuracy"),
            "finetune": ("top1", "top5", "mean_class_accuracy"), "segment": ("miou_clustering", "miou_overclustering")}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in TASKS:
        build_parser().parse_args(argv[:1])  # help, or the error naming the tasks
        return 2
    task, parser = argv[0], task_parser(argv[0])
    args = parser.parse_intermixed_args(argv[1:])
    try:
        settings = resolve(task, args)
    except ConfigError as exc:
        print(f"{PROG} {task}: error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(settings), end="")
        return 0
    for key in REQUIRED_KEYS:
        unset = settings[key] in (None, REQUIRED)
        if unset and key == "data" and settings.get("train_list") and settings.get("val_list"):
            settings["data"] = None  # both lists given: no folder needed
        elif unset:
            also = ", or both --train-list and --val-list" if key == "data" and "train_list" in settings else ""
            parser.error(f"--{key.replace('_', '-')} is required (or {key}=...{also})")
    try:  # the device is there, the paths exist: before any data is read
        check_environment(TASKS[task], settings)
    except ConfigError as exc:
        print(f"{PROG} {task}: error: {exc}", file=sys.stderr)
        return 2
    from sigma import evaluate as ev
    from sigma.engine.interrupt import Interrupted
    try:
        result = getattr(ev, task)(**settings)
    except (ValueError, FileNotFoundError) as exc:
        print(f"{PROG} {task}: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # fine-tuning diverged; the message names the step and what was kept
        print(f"{PROG} {task}: stopped: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:  # fine-tuning on SIGINT/SIGTERM: a checkpoint was written, the message says where
        if exc.is_main:
            print(f"{PROG} {task}: {exc}", file=sys.stderr)
        return exc.exit_code
    keys = HEADLINE.get(task)
    if keys:
        summary = {k: result.get(k) for k in keys}
    else:  # visualize: every file it wrote (per clip a PNG and a GIF; the training curves if any)
        files = [f for c in result["clips"] for f in (c.get("png"), c.get("gif")) if f]
        if result.get("training_curves"):
            files.append(result["training_curves"]["png"])
        summary = {"files": files}
        if result.get("skipped"):  # unreadable videos, already reported on stderr
            summary["skipped"] = [c["video"] for c in result["skipped"]]
    print(json.dumps({"task": task, **summary, "output": f"{settings['output_dir']}/{task}.json"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
