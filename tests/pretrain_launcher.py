"""Test-only entry point of the pretraining CLI with fault injection, for torchrun or python:

    torchrun --nproc_per_node 2 tests/pretrain_launcher.py --crash-at 3:1 --data ... [CLI args]

`--crash-at STEP[:RANK]` installs a step callback (`sigma.pretrain.trainer.STEP_CALLBACKS`) that
makes RANK (default 0) exit abruptly right after optimizer step STEP, on the first attempt of a
torchrun job only (TORCHELASTIC_RESTART_COUNT 0 or unset), so an elastic restart can resume.
"""
import os
import sys


def install_crash(spec):
    from sigma.pretrain import trainer

    step, _, rank = spec.partition(":")
    step, rank = int(step), int(rank or 0)

    def crash(at, info):
        if at == step and info.rank == rank:
            os._exit(17)  # no clean-up, no flush: as a killed process would
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        trainer.STEP_CALLBACKS.append(crash)


def main(argv):
    if argv[:1] == ["--crash-at"]:
        install_crash(argv[1])
        argv = argv[2:]
    from sigma.pretrain.cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
