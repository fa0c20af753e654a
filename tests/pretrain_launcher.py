"""Test-only entry point of the pretraining CLI with fault injection, for torchrun or python:

    torchrun --nproc_per_node 2 tests/pretrain_launcher.py --crash-at 3:1 --data ... [CLI args]

`--crash-at STEP[:RANK]` installs a step callback (`sigma.pretrain.trainer.STEP_CALLBACKS`) that
makes RANK (default 0) exit abruptly right after optimizer step STEP, on the first attempt of a
torchrun job only (TORCHELASTIC_RESTART_COUNT 0 or unset), so an elastic restart can resume.

`--signal-at STEP[:RANK[:SIGNAL[:COUNT]]]` makes RANK (default 0) send itself SIGNAL (TERM or INT,
default TERM) COUNT times (default 1) right after optimizer step STEP: a scheduler's SIGTERM, a
Ctrl-C, or two Ctrl-C in a row, at a step known in advance.
"""
import os
import signal
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


def install_signal(spec):
    from sigma.pretrain import trainer

    step, rank, name, count = (spec.split(":") + ["0", "TERM", "1"][spec.count(":"):])[:4]
    step, rank, count, signum = int(step), int(rank), int(count), getattr(signal, f"SIG{name}")

    def send(at, info):
        if at == step and info.rank == rank:
            for _ in range(count):
                signal.raise_signal(signum)
    trainer.STEP_CALLBACKS.append(send)


def install_term_all(spec):
    import multiprocessing
    import subprocess

    from sigma.pretrain import trainer

    def send(at, info):
        if at == int(spec):
            workers = [str(p.pid) for p in multiprocessing.active_children()]
            assert workers, "--term-all-at needs DataLoader workers (data.num_workers > 0)"
            # not os.kill from here: a worker tells its own main process's SIGTERM apart
            subprocess.run(["kill", "-TERM", str(os.getpid()), *workers], check=True)
    trainer.STEP_CALLBACKS.append(send)


INSTALL = {"--crash-at": install_crash, "--signal-at": install_signal, "--term-all-at": install_term_all}


def main(argv):
    while argv[:1] and argv[0] in INSTALL:
        INSTALL[argv[0]](argv[1])
        argv = argv[2:]
    from sigma.pretrain.cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
