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


def defer_worker_sigterm(poll_s=0.1):
    """In a DataLoader worker (its `worker_init_fn`): an outside SIGTERM no longer kills the
    worker at once. Schedulers that signal every process they track (Slurm's step daemon, a
    cgroup-wide kill) reach the workers at the same moment as the main process; a dead worker
    makes the main process fail in `next(loader)` before it can write its stop checkpoint.

    What the worker does instead:
    - a SIGTERM sent by the process that created it (the DataLoader's own `terminate()` of a stuck
      worker) exits at once, as torch's handler does;
    - an outside SIGTERM is noted; the worker keeps serving batches until that process is gone
      (it stops its workers itself after the checkpoint, and the scheduler's SIGKILL ends it
      anyway). No timer: a worker that left early would make torch raise in the main process
      wherever it is (mid optimizer step, mid checkpoint write) and lose the stop checkpoint;
    - a second outside SIGTERM exits at once.
    Telling the sender apart needs `sigwaitinfo` (the sender's pid), which Python has on Linux;
    elsewhere this does nothing and SIGTERM keeps torch's handler."""
    if not hasattr(signal, "sigwaitinfo") or threading.current_thread() is not threading.main_thread():
        return False
    import multiprocessing
    # the DataLoader's process: the parent under fork, not under forkserver (whose server forks)
    creator = multiprocessing.parent_process()
    owner = creator.pid if creator is not None and creator.pid else os.getppid()
    # Blocked here, in the worker's only thread at this point, SIGTERM stays blocked in every
    # thread started later and is delivered to the one thread that waits for it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def owner_alive():
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # pid reused by another user's process: ours is gone
            return False
        return True

    def wait_for_sigterm():
        noted = False
        while True:
            info = (signal.sigtimedwait({signal.SIGTERM}, poll_s) if noted
                    else signal.sigwaitinfo({signal.SIGTERM}))
            if info is not None and (info.si_pid == owner or noted):
                os._exit(128 + signal.SIGTERM)  # from the DataLoader itself, or a second outside one
            noted = noted or info is not None
            if noted and not owner_alive():
                os._exit(128 + signal.SIGTERM)

    threading.Thread(target=wait_for_sigterm, name="sigma-worker-sigterm", daemon=True).start()
    return True


def stop_flag(stop, device):
    """This process's stop request as a 0-d float tensor on `device` (1.0 or 0.0), for an all-reduce
    the loop already makes: a mean over ranks > 0 means some rank was signalled."""
    return torch.tensor(1.0 if stop is not None and stop.requested else 0.0, device=device)
