"""The one seeding policy of the training loops.

- Global: `seed_everything(seed)` seeds torch, Python and NumPy with the run's seed on EVERY rank
  before the networks are built, so every rank builds the same initial weights and then draws the
  same main-process random numbers step by step. One rank's RNG state (`checkpoints.rng_state`)
  therefore resumes any rank, and mixup draws one λ and box per step for the whole global batch,
  as one process would. The price: per-sample draws of the main process (drop path) repeat at
  the same batch position on every rank.
- Per rank: the only thing that differs between ranks is their share of the sample order
  (`distributed.ResumableDistributedSampler`, one permutation per epoch from seed + epoch).
- Per worker: `seed_worker` (DataLoader `worker_init_fn`) seeds Python's and NumPy's global
  generators from the worker's torch seed, itself derived by the DataLoader from the generator it
  is given (the loops pass one seeded with seed + epoch).
- Per sample: every random draw of a sample (clip position, crop, flip, mask, RandAugment) comes
  from generators seeded from (seed, epoch, index) (`sample_generator`, `sample_global_streams`),
  so a sample is the same whichever worker makes it and in whatever order: what makes a resumed
  run, with any number of workers, replay the interrupted one exactly.
"""
import contextlib
import os
import random
import signal

import numpy as np
import torch

from sigma.engine.interrupt import defer_worker_sigterm


def seed_everything(seed):
    """Seed torch (every device), Python's `random` and NumPy's global generator with `seed`."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def seed_worker(worker_id):
    """DataLoader `worker_init_fn`: seed Python's and NumPy's global generators from the worker's
    torch seed (distinct per worker, derived from the DataLoader's generator), and leave stopping
    to the main process.

    On Ctrl-C or SIGTERM the main process finishes its step and writes a checkpoint
    (sigma.engine.interrupt), for which it needs its workers alive. A terminal's Ctrl-C and GNU
    `timeout` signal the whole process group: each worker leads a process group of its own (group
    signals miss it) and ignores SIGINT. A scheduler that sends SIGTERM to every process one by
    one reaches the workers too: they keep serving until the main process is done
    (`defer_worker_sigterm`), while a SIGTERM from the DataLoader itself still stops a stuck worker."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "setpgid"):
        try:
            os.setpgid(0, 0)
        except OSError:  # not permitted here (e.g. already a session leader): group signals still reach it
            pass
    defer_worker_sigterm()


def sample_generator(seed, epoch, index):
    """The torch.Generator of sample `index` at epoch (draw) `epoch`."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


@contextlib.contextmanager
def sample_global_streams(seed, epoch, index, stream):
    """Within the block, Python's and NumPy's global generators are seeded from (seed, stream,
    epoch, index), for per-sample code that can only draw from them (timm's RandAugment); their
    states are restored afterwards. `stream` tells apart several such uses of one sample."""
    saved = random.getstate(), np.random.get_state()
    s = int(np.random.SeedSequence([int(seed), int(stream), int(epoch), int(index)]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
