"""Joining torchrun's process group, rank helpers, and the one distributed sampler (resumable).

Multi-node: RANK and WORLD_SIZE are global, LOCAL_RANK picks this node's device; torchrun sets
all three (one node or many, see docs/pretraining.md). Everything here also works in a single
process (world size 1) without torch.distributed.
"""
import datetime
import itertools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


@dataclass
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False  # this call created the process group (and should destroy it)

    @property
    def is_main(self):
        return self.rank == 0


def pick_device(device="auto", local_rank=0):
    """The torch.device of this process: "auto" is cuda:LOCAL_RANK when CUDA is available, else
    cpu; "cuda" is cuda:LOCAL_RANK; anything else ("cpu", "cuda:1") is taken as given."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device} was requested but no CUDA device is available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device="auto", timeout_s=1800):
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU) and pick
    this process's device (`pick_device`). Returns a DistInfo; `shutdown(info)` leaves the group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if world > 1 and dev.type == "cuda":  # one device per process, whatever index was asked for
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        join_process_group(backend, rank, world, datetime.timedelta(seconds=timeout_s))
        owns = True
    elif dist.is_available() and dist.is_initialized():  # a caller's group: use its ranks
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, local, world, dev, owns)


def join_process_group(backend, rank, world_size, timeout):
    """init_process_group from torchrun's environment, with each elastic attempt's keys apart.

    After an elastic restart (--max-restarts) the new workers share the agent's store with the
    failed attempt, whose gloo keys are still in it; reading them, the new ranks connect to dead
    ranks' addresses and fail ("connection refused") or hang. Keys under a prefix of the restart
    count keep each attempt to itself. Without torchelastic this is the plain env:// set-up."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend, timeout=timeout)
        return
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=timeout)
    dist.init_process_group(backend, store=dist.PrefixStore(f"sigma/attempt_{restart}", store), rank=rank,
                            world_size=world_size, timeout=timeout)


def shutdown(info):
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info):
    if info.world_size > 1:
        dist.barrier()


def all_gather_object(obj, info):
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if info.world_size == 1:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(t, info):
    """Mean over ranks of a tensor (in place on a copy)."""
    if info.world_size == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / info.world_size


def wrap_ddp(module, info):
    """`module` itself in one process, else DistributedDataParallel over it."""
    if info.world_size == 1:
        return module
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[info.device.index] if info.device.type == "cuda" else None)


class ResumableDistributedSampler(DistributedSampler):
    """This rank's share of one permutation per epoch, as `(index, epoch)` keys, that can start an
    epoch part-way.

    The permutation is `DistributedSampler`'s (a torch generator seeded with seed + epoch; the
    tail is dropped so every rank gets the same number of samples; rank r takes every world-th
    index from r). Keys carry the epoch so a dataset seeds each sample from (seed, epoch, index)
    whichever worker makes it (`sigma.engine.seeding`). `set_start(n)` skips the first n keys of
    this rank's order: a run resumed mid-epoch sees exactly the samples the interrupted run had
    not seen yet. Call `set_epoch` (and `set_start`) before each epoch's iterator.
    """

    def __init__(self, dataset, num_replicas, rank, seed, shuffle=True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, n):
        if not 0 <= n <= self.num_samples:
            raise ValueError(f"start {n} outside this rank's {self.num_samples} samples")
        self.start = n

    def __iter__(self):
        return ((i, self.epoch) for i in itertools.islice(super().__iter__(), self.start, None))

    def __len__(self):
        return self.num_samples - self.start
