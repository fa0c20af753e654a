"""Graceful stop on SIGINT / SIGTERM (Ctrl-C, or what Slurm and Kubernetes send before a kill).

    with GracefulStop(say) as stop:
        for step in ...:
            ...one optimizer step...
            if stop.requested (agreed over ranks, see below):
                save a checkpoint; raise Interrupted(stop.signum, ...)

The first signal only records itself (`requested`, `signum`): the loop finishes its step, writes a
checkpoint and raises `Interrupted`, which a command line turns into one line and exit code
128 + signal (130 for SIGINT, 143 for SIGTERM). A second signal exits the process at once (same
codes) without a checkpoint: the previous one is intact, since every write is atomic.

Under torchrun a signal may reach one rank only, or the ranks at different steps: the loop must
stop all ranks at the same step or one would wait forever in a collective. The stop flag therefore
travels in an all-reduce the loop makes anyway (`agreed`), and each loop says which.
"""
import os
import signal
import sys
import threading

import torch

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run stopped on a signal after writing a checkpoint; `exit_code` is 128 + the signal."""

    def __init__(self, message, signum, is_main=True):
        super().__init__(message)
        self.signum, self.is_main = signum, is_main
        self.exit_code = 128 + int(signum)


def signal_name(signum):
    return signal.Signals(signum).name


class GracefulStop:
    """While active (a context manager, in the main thread), SIGINT and SIGTERM are recorded
    instead of killing the process; a second one exits at once. Elsewhere (another thread, where
    Python allows no handlers) it does nothing and `requested` stays False.

    say: called with one line when the first signal arrives (e.g. the progress-bar-safe writer).
    """

    def __init__(self, say=None, prog="sigma"):
        self.say, self.prog = say, prog
        self.signum = None
        self._previous = {}
        self._pid = os.getpid()

    @property
    def requested(self):
        return self.signum is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        return False

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:
            # a forked DataLoader worker inherits this handler: Ctrl-C reaches the whole process
            # group, and the worker must keep serving batches until the main process stops
            return
        if self.signum is not None:
            sys.stderr.write(f"\n{self.prog}: second {signal_name(signum)}: exiting now, without a checkpoint "
                             "(the previous one is intact)\n")
            sys.stderr.flush()
            os._exit(128 + int(signum))
        self.signum = signum
        if self.say is not None:
            self.say(f"{signal_name(signum)} received: stopping after this step with a checkpoint "
                     "(send it again to exit at once, without one)")


def stop_flag(stop, device):
    """This process's stop request as a 0-d float tensor on `device` (1.0 or 0.0), for an all-reduce
    the loop already makes: a mean over ranks > 0 means some rank was signalled."""
    return torch.tensor(1.0 if stop is not None and stop.requested else 0.0, device=device)
