"""SinkhornSwapLoss under data parallelism (docs/distributed.md): 2 CPU processes on gloo must reproduce a
single process on the concatenated batch — loss, gradients and diagnostics."""
import datetime
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from truth import sinkhorn_log

from sigma import SinkhornSwapLoss
from sigma_kernels import SinkhornResult, sinkhorn_solve
from sigma_kernels.distributed import sinkhorn_solve_distributed, sinkhorn_streaming_distributed

WORLD = 2
K, D, D_IN = 23, 12, 9
STAT_KEYS = ("entropy_v", "entropy_p", "usage_perplexity_v", "usage_perplexity_p", "unused_prototypes_v",
             "unused_prototypes_p", "marginal_error_v", "marginal_error_p")


class TwoHeads(nn.Module):
    """A stand-in for video model + projection network, with the loss inside (so DDP averages the
    prototypes' gradient like any other parameter)."""

    def __init__(self, **loss_kwargs):
        super().__init__()
        self.video = nn.Linear(D_IN, D)
        self.projection = nn.Linear(D_IN, D)
        self.criterion = SinkhornSwapLoss(K, D, backend="reference", **loss_kwargs)

    def forward(self, x, mask):
        return self.criterion(self.video(x), self.projection(x), mask)


# Each case: loss options, dtype, samples per rank (unequal on purpose), mask ratio.
CASES = [
    dict(name="float64-hard-materialised", loss=dict(targets="hard", streaming=False), dtype=torch.float64,
         batch=(3, 2)),
    dict(name="float32-soft-streaming", loss=dict(targets="soft", streaming=True, epsilon=0.03),
         dtype=torch.float32, batch=(2, 3)),
    dict(name="float32-soft-stored", loss=dict(targets="soft", streaming=False), dtype=torch.float32,
         batch=(3, 1)),
    dict(name="float32-hard-tol", loss=dict(targets="hard", sinkhorn_iterations=40, tol=1e-4, check_every=3),
         dtype=torch.float32, batch=(2, 2)),
    dict(name="float32-hard-explicit-group", loss=dict(targets="hard"), dtype=torch.float32, batch=(1, 3),
         explicit_group=True),
]
N_TOKENS = 16


def make_case(case, seed):
    """Model weights, clips and masks for the whole (concatenated) batch."""
    torch.manual_seed(seed)
    model = TwoHeads(**case["loss"]).to(case["dtype"])
    b = sum(case["batch"])
    x = torch.randn(b, N_TOKENS, D_IN, dtype=case["dtype"])
    # unequal masked counts per sample: the global M is not WORLD × local M
    mask = torch.rand(b, N_TOKENS) < torch.linspace(0.5, 0.9, b)[:, None]
    mask[:, 0] = True
    return model, x, mask


def single_process(case, seed):
    model, x, mask = make_case(case, seed)
    loss = model(x, mask)
    loss.backward()
    return {"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
            "stats": {k: model.criterion.last_stats[k] for k in STAT_KEYS}}


def _worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        results = {}
        for seed, case in enumerate(CASES):
            model, x, mask = make_case(case, seed)
            if case.get("explicit_group"):
                # a group passed explicitly (here a new group holding both ranks) instead of the default
                model.criterion.process_group = dist.new_group(list(range(WORLD)))
            ddp = nn.parallel.DistributedDataParallel(model)
            start = sum(case["batch"][:rank])
            rows = slice(start, start + case["batch"][rank])
            loss = ddp(x[rows], mask[rows])
            loss.backward()  # DDP averages the gradients over the ranks
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            results[case["name"]] = {
                "loss": mean_loss / WORLD,
                "grads": {n.removeprefix("module."): p.grad.clone() for n, p in ddp.named_parameters()},
                "stats": {k: model.criterion.last_stats[k] for k in STAT_KEYS},
            }
        # The sigma_kernels helpers on their own (they learn the global token count themselves).
        z, c = solver_inputs()
        rows = slice(0, SOLVER_ROWS[0]) if rank == 0 else slice(SOLVER_ROWS[0], sum(SOLVER_ROWS))
        s = F.normalize(z[rows], dim=1) @ c.T
        results["solve"] = tuple(sinkhorn_solve_distributed(s, 0.05, 6))
        results["solve_streaming"] = tuple(sinkhorn_streaming_distributed(z[rows], c, 0.05, 6))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


SOLVER_ROWS = (37, 29)


def solver_inputs():
    g = torch.Generator().manual_seed(123)
    return torch.randn(sum(SOLVER_ROWS), 7, generator=g), F.normalize(torch.randn(11, 7, generator=g), dim=1)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def distributed_results():
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(_free_port(), out_dir), nprocs=WORLD, join=True)
        yield [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]


@pytest.mark.distributed
@pytest.mark.parametrize("seed, case", list(enumerate(CASES)), ids=[c["name"] for c in CASES])
def test_two_ranks_equal_one_process_on_the_concatenated_batch(distributed_results, seed, case):
    want = single_process(case, seed)
    tol = dict(rtol=1e-5, atol=1e-5) if case["dtype"] == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for rank, results in enumerate(distributed_results):
        got = results[case["name"]]
        torch.testing.assert_close(got["loss"], want["loss"], **tol)
        assert got["grads"].keys() == want["grads"].keys()
        for name, g in want["grads"].items():
            assert g.abs().max() > 0, name
            torch.testing.assert_close(got["grads"][name], g, **tol,
                                       msg=lambda s, rank=rank, name=name: f"rank {rank} d{name}: {s}")
        for key in STAT_KEYS:
            if key.startswith("marginal_error"):
                # a sum of |Σ_i P_ik − 1/K| near 0: compare absolutely
                torch.testing.assert_close(got["stats"][key], want["stats"][key], rtol=0, atol=1e-6)
            else:
                torch.testing.assert_close(got["stats"][key], want["stats"][key], **tol)


@pytest.mark.distributed
@pytest.mark.parametrize("key", ["solve", "solve_streaming"])
def test_distributed_sinkhorn_equals_one_solve_on_all_rows(distributed_results, key):
    z, c = solver_inputs()
    want = sinkhorn_solve(F.normalize(z, dim=1) @ c.T, 0.05, 6)
    starts = (0, SOLVER_ROWS[0], sum(SOLVER_ROWS))
    for rank, results in enumerate(distributed_results):
        got = SinkhornResult(*results[key])
        torch.testing.assert_close(got.u, want.u[starts[rank]:starts[rank + 1]], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.v, want.v, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.marginal_error, want.marginal_error, rtol=0, atol=1e-6)
    assert want.marginal_error > 1e-4  # 6 iterations: the error is far from 0, so the check has teeth


def test_world_of_one_solves_the_local_batch():
    """Without torch.distributed initialised, the distributed helpers solve the local batch:
    checked against the float64 truth (u + v, gauge-free, and the column marginal error)."""
    from sigma_kernels.distributed import global_count, is_distributed, world_size
    assert world_size() == 1 and not is_distributed()
    assert global_count(19, "cpu") == 19
    g = torch.Generator().manual_seed(7)
    z = torch.randn(19, 7, generator=g)
    c = F.normalize(torch.randn(5, 7, generator=g), dim=1)
    s = F.normalize(z, dim=1) @ c.T
    q64, u64, v64 = sinkhorn_log(s.double(), 0.05, 4)
    error64 = (q64.sum(0) / 19 - 1 / 5).abs().sum()
    assert error64 > 1e-3  # 4 iterations: far from balanced, so the error is a real check
    for got in (sinkhorn_solve_distributed(s, 0.05, 4), sinkhorn_streaming_distributed(z, c, 0.05, 4)):
        torch.testing.assert_close((got.u[:, None] + got.v[None, :]).double(), u64[:, None] + v64[None, :],
                                   rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got.marginal_error.double(), error64, rtol=1e-4, atol=1e-6)
    with pytest.raises(RuntimeError, match="process_group"):
        world_size(process_group=object())
