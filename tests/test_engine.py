"""sigma.engine: the AMP policy, the checkpoint loader's format check, the resumable sampler's keys,
per-sample seeding, and the layer-decay learning rates the schedule gives each group."""
import os
import random
import stat

import numpy as np
import pytest
import torch

from sigma.engine import amp as amp_policy
from sigma.engine import files
from sigma.engine.checkpoints import load_checkpoint
from sigma.engine.distributed import ResumableDistributedSampler, pick_device
from sigma.engine.files import FINETUNE_FORMAT, PRETRAIN_FORMAT, atomic_torch_save
from sigma.engine.seeding import sample_generator, sample_global_streams


@pytest.mark.parametrize("amp,device,want", [
    ("auto", "cpu", "none"), ("auto", "cuda", "fp16"), ("none", "cuda", "none"), (None, "cpu", "none"),
    ("bf16", "cpu", "bf16"), ("bf16", "cuda", "bf16"), ("fp16", "cuda", "fp16"),
])
def test_amp_policy(amp, device, want):
    assert amp_policy.resolve_amp(amp, torch.device(device)) == want
    assert amp_policy.amp_dtype(amp, torch.device(device)) == {"none": None, "bf16": torch.bfloat16,
                                                               "fp16": torch.float16}[want]


@pytest.mark.parametrize("amp,match", [("fp16", "amp=fp16 needs a CUDA device"), ("fp32", "amp must be one of")])
def test_amp_policy_errors_name_the_setting(amp, match):
    with pytest.raises(ValueError, match=match):
        amp_policy.resolve_amp(amp, torch.device("cpu"))


def test_build_amp_on_cpu():
    resolved, autocast, scaler = amp_policy.build_amp("bf16", torch.device("cpu"))
    assert resolved == "bf16" and not scaler.is_enabled()  # bf16 needs no loss scaling
    with autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    resolved, autocast, scaler = amp_policy.build_amp("auto", torch.device("cpu"))
    with autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert resolved == "none" and not scaler.is_enabled()


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device("auto", local_rank=3) == torch.device("cpu")
        with pytest.raises(RuntimeError, match="device=cuda was requested"):
            pick_device("cuda")


def test_load_checkpoint_checks_the_format(tmp_path):
    path = atomic_torch_save({"format": FINETUNE_FORMAT, "step": 3}, tmp_path / "a.pt")
    assert load_checkpoint(path, FINETUNE_FORMAT)["step"] == 3
    with pytest.raises(ValueError, match=f"a.pt is not a '{PRETRAIN_FORMAT}' checkpoint"):
        load_checkpoint(path, PRETRAIN_FORMAT)
    old = atomic_torch_save({"format": "sigma-finetune-v1"}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="older format .'sigma-finetune-v1', this version reads 'sigma-finetune-v2'"):
        load_checkpoint(old, FINETUNE_FORMAT)
    newer = atomic_torch_save({"format": "sigma-finetune-v9"}, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="is not a 'sigma-finetune-v2' checkpoint"):
        load_checkpoint(newer, FINETUNE_FORMAT)
    listed = atomic_torch_save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="its format is None"):
        load_checkpoint(listed, FINETUNE_FORMAT)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt", FINETUNE_FORMAT)


def test_sampler_keys_are_one_permutation_shared_by_the_ranks():
    data = list(range(11))
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(5 + 2)).tolist()[:10]  # seed + epoch
    shares = []
    for rank in range(2):
        s = ResumableDistributedSampler(data, 2, rank, seed=5)
        s.set_epoch(2)
        shares.append(list(s))
        assert all(epoch == 2 for _, epoch in shares[-1])
    assert [i for i, _ in shares[0]] == perm[0::2] and [i for i, _ in shares[1]] == perm[1::2]


def test_per_sample_streams_depend_on_the_key_only():
    a = torch.rand(3, generator=sample_generator(0, 1, 7))
    torch.rand(100)  # the global generator's position does not matter
    assert torch.equal(a, torch.rand(3, generator=sample_generator(0, 1, 7)))
    assert not torch.equal(a, torch.rand(3, generator=sample_generator(0, 2, 7)))
    random.seed(1)
    np.random.seed(1)
    with sample_global_streams(0, 1, 7, stream=7):
        drawn = (random.random(), np.random.rand())
    after = (random.random(), np.random.rand())
    random.seed(1)
    np.random.seed(1)
    assert after == (random.random(), np.random.rand())  # the global streams are restored
    with sample_global_streams(0, 1, 7, stream=7):
        assert drawn == (random.random(), np.random.rand())


def test_layer_decay_groups_reach_lr_times_their_scale():
    """timm's scheduler multiplies each group's lr_scale into its lr: at the peak a group of
    layer l runs at lr · layer_decay^(depth + 1 - l), the head at lr."""
    pytest.importorskip("timm")
    from sigma.engine.optim import build_optimizer, build_scheduler
    from sigma.models import create_classifier

    model = create_classifier("sigma_vit_tiny_patch16", num_classes=3, num_frames=4, img_size=32)
    lr, decay = 1e-3, 0.5
    opt = build_optimizer(model, lr, 0.05, (0.9, 0.999), layer_decay=decay)
    sched = build_scheduler(opt, total_steps=10, warmup_steps=2, min_lr=0.0)
    sched.step_update(2)  # end of the warmup: the peak
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    depth = len(scales) - 2  # groups: embedding (layer 0), blocks 1..depth, head (depth + 1)
    assert scales == pytest.approx([decay ** (depth + 1 - layer) for layer in range(depth + 2)])
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(lr * g["lr_scale"], rel=1e-12)
    assert max(g["lr"] for g in opt.param_groups) == pytest.approx(lr)


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_gives_new_files_the_umask_permissions_and_keeps_existing_ones(tmp_path, durable):
    """mkstemp's 0600 must not leak into written files (a results CSV unreadable by the group)."""
    from sigma.engine.files import atomic_write_text

    new = atomic_write_text(tmp_path / "new.txt", "a", durable=durable)
    assert files._UMASK & 0o400 == 0  # the umask this process runs with lets the owner read
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~files._UMASK
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o640)
    atomic_write_text(kept, "new", durable=durable)
    assert kept.read_text() == "new" and stat.S_IMODE(kept.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


class _WorkerSignals(torch.utils.data.Dataset):
    """Reports, from inside the DataLoader worker, how it would take SIGTERM and SIGINT, and
    whether it left its parent's process group."""

    parent_group = os.getpgid(0)

    def __len__(self):
        return 1

    def __getitem__(self, index):
        import signal
        return torch.tensor([signal.getsignal(signal.SIGTERM) == signal.SIG_IGN,
                             signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                             os.getpgid(0) != self.parent_group])


def test_workers_leave_group_signals_to_the_main_process():
    """Ctrl-C and `timeout` signal the whole group: killed workers made the run die without the
    checkpoint it promised. Workers now lead their own group and ignore SIGINT; SIGTERM is not
    ignored (SIG_IGN would keep the DataLoader from stopping a stuck worker and hang the exit)."""
    from sigma.engine.seeding import seed_worker

    loader = torch.utils.data.DataLoader(_WorkerSignals(), num_workers=1, worker_init_fn=seed_worker)
    assert next(iter(loader)).tolist() == [[False, True, True]]
    plain = torch.utils.data.DataLoader(_WorkerSignals(), num_workers=1)
    assert next(iter(plain)).tolist()[0][2] is False  # without seed_worker a worker stays in the group


def _deferring_child(ready):
    from sigma.engine.interrupt import defer_worker_sigterm
    ready.put(defer_worker_sigterm())
    import time
    time.sleep(120)


@pytest.mark.skipif(not hasattr(__import__("signal"), "sigwaitinfo"), reason="needs sigwaitinfo (Linux)")
@pytest.mark.parametrize("who", ["its parent", "an outsider, twice"])
def test_a_worker_defers_an_outside_sigterm_but_not_its_parents(who):
    """A scheduler's SIGTERM to every process must not kill a worker before its main process has
    checkpointed; the DataLoader's own SIGTERM (a stuck worker) and a second outside one still stop it."""
    import multiprocessing
    import signal
    import subprocess
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Queue()
    child = ctx.Process(target=_deferring_child, args=(ready,), daemon=True)
    child.start()
    try:
        assert ready.get(timeout=30) is True
        if who == "its parent":
            os.kill(child.pid, signal.SIGTERM)  # what DataLoader's terminate() does
        else:
            subprocess.run(["kill", "-TERM", str(child.pid)], check=True)
            child.join(1.0)
            assert child.is_alive()  # still serving: its main process is alive and has not stopped it
            subprocess.run(["kill", "-TERM", str(child.pid)], check=True)
        child.join(10.0)
        assert not child.is_alive() and child.exitcode == 128 + signal.SIGTERM
    finally:
        if child.is_alive():
            child.kill()
