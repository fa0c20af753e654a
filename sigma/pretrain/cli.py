"""Command line: python -m sigma.pretrain --config CONFIG --data LIST_OR_DIR --output-dir DIR
[--resume auto|PATH | --overwrite] [key=value ...]  (also installed as `sigma-pretrain`)."""
import argparse
import functools
import sys
import warnings

from sigma.engine.config import invoked_as

from .config import ConfigError, available_configs, dump_config, load_config


def build_parser(prog=None):
    p = argparse.ArgumentParser(
        prog=prog or invoked_as("sigma.pretrain", "sigma-pretrain"),
        description="Pretrain a video model with SIGMA (or the VideoMAE pixel / L2 baselines). "
                    "Run under torchrun for several GPUs or processes.",
        epilog="Overrides are dotted config keys, e.g. optim.batch_size=8 objective.epsilon=0.03 "
               "projection.kwargs.weights=/path/dino.pth. Shipped configs: tiny (default), "
               + ", ".join(c for c in available_configs() if c != "tiny") + ".")
    p.add_argument("--config", default="tiny",
                   help="a shipped config name, 'default' (every key at its default) or a YAML file (default: tiny)")
    p.add_argument("--data",
                   help="a video list (`path label ...` per line, relative to its folder or data.root) or a folder "
                        "of videos")
    p.add_argument("--output-dir", help="where metrics.csv, config.yaml and checkpoints/ go")
    p.add_argument("--resume", default=None,
                   help="'auto' continues from the newest checkpoint in --output-dir (if any); or a checkpoint path")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --output-dir that holds a run: deletes its metrics.csv, config.yaml, "
                        "provenance.json, tensorboard/ and checkpoints (without it, or --resume, such a folder is "
                        "refused)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (every key; loadable with --config) and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, anywhere on the line")
    return p


def _one_line_warning(prog, message, category, filename, lineno, file=None, line=None):
    # the run's warnings (a skipped checkpoint, a file without checksum) are messages to the user:
    # one line each, without the source line Python's default format adds
    print(f"{prog}: warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None):
    parser = build_parser()
    prog = parser.prog  # errors start with the command the user typed
    # intermixed: key=value overrides may sit between the options
    args = parser.parse_intermixed_args(argv)
    if not args.print_config and (args.data is None or args.output_dir is None):
        parser.error("--data and --output-dir are required")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from ..data import NoReadableVideoError
    from ..engine.files import NoSpaceError
    from ..engine.interrupt import Interrupted
    from .trainer import DataError, train
    try:
        with warnings.catch_warnings():  # restores showwarning when main() returns (in-process callers)
            warnings.showwarning = functools.partial(_one_line_warning, prog)
            train(cfg, args.data, args.output_dir, resume=args.resume, argv=sys.argv if argv is None else argv,
                  overwrite=args.overwrite)
    except (ConfigError, DataError, FileNotFoundError, NoReadableVideoError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # the trainer stopped on a non-finite state; its message says what to do
        print(f"{prog}: stopped: {e}", file=sys.stderr)
        return 1
    except NoSpaceError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:  # SIGINT/SIGTERM: a checkpoint was written, the message says where
        if e.is_main:
            print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the step loop began: nothing to save yet
        print(f"{prog}: interrupted before the first step; no checkpoint was written", file=sys.stderr)
        return 130
    return 0
