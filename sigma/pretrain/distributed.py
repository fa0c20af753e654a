"""Process-group setup under torchrun and a distributed sampler that can resume mid-epoch.

Everything here also works in a single process (world size 1) without torch.distributed.
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


def init_distributed(device="auto", timeout_s=1800):
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU) and pick
    this process's device ("auto": cuda:LOCAL_RANK when CUDA is available, else cpu)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        join_process_group("nccl" if use_cuda else "gloo", rank, world, datetime.timedelta(seconds=timeout_s))
        owns = True
    return DistInfo(rank, local, world, dev, owns)


def join_process_group(backend, rank, world_size, timeout):
    """init_process_group from torchrun's environment. After an elastic restart (--max-restarts),
    the workers share the agent's store with the failed attempt, whose gloo keys are still in it:
    the new ranks then read the dead ranks' addresses and fail with "connection refused" or hang
    (torch 2.14 here, 0 of 4 restarts succeeded). Keys under a prefix of the restart count keep
    each attempt to itself; without torchelastic this is the plain env:// initialisation."""
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


class ResumableDistributedSampler(DistributedSampler):
    """`DistributedSampler` (shuffled per epoch from `seed`, equal share per rank) that can start
    an epoch part-way: `set_start(n)` skips the first n indices of this rank's order, so a run
    resumed mid-epoch sees exactly the clips the interrupted run had not seen yet."""

    def __init__(self, dataset, num_replicas, rank, seed, shuffle=True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, n):
        if not 0 <= n <= self.num_samples:
            raise ValueError(f"start {n} outside this rank's {self.num_samples} samples")
        self.start = n

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self):
        return self.num_samples - self.start
