"""End-to-end pretraining runs on a few synthetic videos (tiny model, few steps), exact resume,
torchrun DDP on CPU (gloo), elastic restart, and the objectives against their definitions."""
import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("av")

from sigma.engine.checkpoints import state_fingerprint  # noqa: E402
from sigma.pretrain import checkpoint as ck  # noqa: E402
from sigma.pretrain import load_config  # noqa: E402
from sigma.pretrain.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Small enough for a few seconds per run on a shared 2-core CPU: 4 frames at 32^2 -> 2x2x2 tubes.
FAST = ["model.kwargs.depth=1", "model.kwargs.decoder_depth=1", "data.num_frames=4", "data.img_size=32",
        "data.mask_ratio=0.5", "data.num_workers=0", "optim.batch_size=2", "objective.num_prototypes=4",
        "projection.out_dim=16", "projection.kwargs.hidden_dims=[64,64]",
        "optim.epochs=3", "optim.warmup_epochs=1", "log.every=1", "log.stats_every=2", "log.tensorboard=false",
        "checkpoint.every=2", "checkpoint.keep=null"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Synthetic set: 8 training videos -> 4 steps per epoch at batch 2 on one process."""
    from sigma.data.synthetic import make_synthetic_dataset
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(out, videos=10, seed=0, frames=16, size=64, object_size=(12, 24), davis=False)
    return out


def _train_list(videos, n=None, extra=()):
    lines = (videos / "train.txt").read_text().splitlines()
    return lines[:n] if n else lines


def _write_list(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(out):
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _states(out, step):
    return ck.load_checkpoint(out / "checkpoints" / f"checkpoint-{step}.pt")


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_tiny_runs_and_writes_a_loadable_checkpoint(videos, tmp_path):
    from sigma.models import create_model, create_projection
    out = tmp_path / "run"
    rc = main(["--data", str(videos / "train.txt"), "--output-dir", str(out), *FAST, "optim.max_steps=3"])
    assert rc == 0
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    for r in rows:
        for k in ("loss", "lr", "clips_per_s", "loss_v", "loss_p", "entropy_v", "usage_perplexity_p"):
            assert float(r[k]) == float(r[k]) and abs(float(r[k])) < 1e6, k  # finite
    assert rows[1]["pred_erank"] and rows[1]["target_std"]  # collapse measures every stats_every steps
    state = ck.load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 3 and state["format"] == "sigma-pretrain-v1" and state["epoch"] == 0
    assert state["config"]["optim"]["max_steps"] == 3 and state["provenance"]["seed"] == 0
    assert "torch" in state["provenance"]["versions"]
    # evaluation rebuilds the networks from the recorded configs
    model = create_model(**state["model_config"])
    model.load_state_dict(state["model"])
    projection = create_projection(**state["projection_config"])
    projection.load_state_dict(state["projection"])
    assert state["loss"]["prototypes"].shape == (4, 16) and state["loss_config"]["num_prototypes"] == 4
    assert (out / "config.yaml").is_file() and (out / "provenance.json").is_file()
    assert load_config(str(out / "config.yaml")) == state["config"]


def test_resume_mid_epoch_is_bitwise_exact(videos, tmp_path):
    data = str(videos / "train.txt")
    n_steps, k = 3, 1  # 2 steps per epoch at batch 4: stop mid-epoch 0, resume, cross into epoch 1
    full, part = tmp_path / "full", tmp_path / "part"
    fast = [*FAST, "optim.batch_size=4", "checkpoint.every=1"]
    assert main(["--data", data, "--output-dir", str(full), *fast, f"optim.max_steps={n_steps}"]) == 0
    assert main(["--data", data, "--output-dir", str(part), *fast, f"optim.max_steps={k}"]) == 0
    assert main(["--data", data, "--output-dir", str(part), "--resume", "auto", *fast,
                 f"optim.max_steps={n_steps}"]) == 0
    a, b = _states(full, n_steps), _states(part, n_steps)
    assert b["provenance"]["resumed_from"].endswith(f"checkpoint-{k}.pt")
    for key in ("model", "projection", "loss", "optimizer", "scaler", "step", "epoch"):
        _assert_same_tensors(a[key], b[key], key)
    ra, rb = _rows(full), _rows(part)
    assert [r["step"] for r in rb] == [str(s) for s in range(1, n_steps + 1)]
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]


def test_objectives_pixel_and_l2_run(videos, tmp_path):
    data = str(videos / "train.txt")
    assert main(["--data", data, "--output-dir", str(tmp_path / "px"), *FAST, "objective.name=pixel",
                 "optim.max_steps=1"]) == 0
    state = ck.load_checkpoint(tmp_path / "px" / "checkpoints" / "last.pt")
    assert state["projection_config"]["kind"] == "pixels" and state["model_config"]["out_dim"] == 3 * 2 * 16 * 16
    assert state["loss"] == {}
    assert main(["--data", data, "--output-dir", str(tmp_path / "l2"), *FAST, "objective.name=l2",
                 "optim.max_steps=1"]) == 0
    s0 = ck.load_checkpoint(tmp_path / "l2" / "checkpoints" / "last.pt")
    # both networks are trained under l2: the projection has optimizer state
    n_proj = sum(1 for _ in s0["projection"])
    assert n_proj > 0 and len(s0["optimizer"]["state"]) >= n_proj
    # the logged loss of step 1 is the mean squared difference of the two initial networks' outputs
    # on the first batch, recomputed here in float64 from the same seeded set-up
    from sigma.engine.distributed import DistInfo
    from sigma.pretrain.trainer import epoch_loader, setup
    cfg = load_config("tiny", [*FAST, "objective.name=l2", "optim.max_steps=1"])
    run = setup(cfg, data, tmp_path / "unused", DistInfo(0, 0, 1, torch.device("cpu")))
    batch = next(iter(epoch_loader(run, 0, 0)))
    with torch.no_grad():
        pred = run.module.model(batch["video"], batch["mask"]).double()
        target = run.module.projection(batch["video"], batch["mask"]).double()
    want = ((pred - target) ** 2).sum() / pred.numel()
    assert float(_rows(tmp_path / "l2")[0]["loss"]) == pytest.approx(float(want), rel=1e-5)


def test_gradient_accumulation_matches_the_larger_batch(videos, tmp_path):
    # The pixel loss is a plain mean, so 2 micro-batches of 2 clips give the gradient of one batch
    # of 4 (same clips, same masks, same order); one AdamW step from the same start must agree.
    data = str(videos / "train.txt")
    common = [*FAST, "objective.name=pixel", "optim.max_steps=1", "optim.warmup_epochs=0", "optim.clip_grad=1.0"]
    assert main(["--data", data, "--output-dir", str(tmp_path / "b4"), *common, "optim.batch_size=4"]) == 0
    assert main(["--data", data, "--output-dir", str(tmp_path / "a2"), *common, "optim.batch_size=2",
                 "optim.accum_steps=2"]) == 0
    a = ck.load_checkpoint(tmp_path / "b4" / "checkpoints" / "last.pt")
    b = ck.load_checkpoint(tmp_path / "a2" / "checkpoints" / "last.pt")
    assert a["provenance"]["peak_lr"] == b["provenance"]["peak_lr"]  # same global batch, same lr
    # Adam's first update is lr·g/(|g| + eps) per weight: rounding differences of the summed
    # gradient matter only where |g| ~ eps, and move such a weight by at most a fraction of lr.
    lr = a["provenance"]["peak_lr"]
    for name, w in a["model"].items():
        torch.testing.assert_close(b["model"][name], w, rtol=0, atol=0.05 * lr, msg=name)
        assert (b["model"][name] - w).abs().gt(1e-6).float().mean() < 1e-3, name
    ra, rb = _rows(tmp_path / "b4")[0], _rows(tmp_path / "a2")[0]
    assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-5)
    # Adam's step hides the gradient's scale; the logged norm (before clipping) does not
    assert float(ra["grad_norm"]) == pytest.approx(float(rb["grad_norm"]), rel=1e-4)


def test_bad_data_errors_and_corrupt_file_skipped(videos, tmp_path, capsys, caplog):
    missing = tmp_path / "missing.txt"
    assert main(["--data", str(missing), "--output-dir", str(tmp_path / "o1"), *FAST]) == 2
    assert "missing.txt" in capsys.readouterr().err
    empty = _write_list(tmp_path / "empty.txt", [])
    assert main(["--data", str(empty), "--output-dir", str(tmp_path / "o2"), *FAST]) == 2
    assert "empty.txt" in capsys.readouterr().err
    # a corrupt video in the list is skipped and reported; the run goes on
    (videos / "videos" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    lst = _write_list(videos / "with_corrupt.txt", ["videos/corrupt.mp4 0 0", *_train_list(videos)])
    with caplog.at_level(logging.WARNING):
        assert main(["--data", str(lst), "--output-dir", str(tmp_path / "o3"), *FAST, "optim.max_steps=2"]) == 0
    assert "corrupt.mp4" in caplog.text
    assert [r["videos_skipped"] for r in _rows(tmp_path / "o3")][-1] == "1"


def _torchrun(args, env_extra=None, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.distributed
def test_torchrun_two_processes_hold_identical_parameters(videos, tmp_path):
    out = tmp_path / "ddp"
    # 8 clips over 2 ranks at batch 2: 2 steps per epoch
    r = _torchrun(["--nproc_per_node", "2", "-m", "sigma.pretrain", "--data", str(videos / "train.txt"),
                   "--output-dir", str(out), *FAST, "optim.max_steps=3"])
    assert r.returncode == 0, r.stderr[-3000:]
    state = ck.load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 3 and state["provenance"]["world_size"] == 2
    prints = state["rank_fingerprints"]
    saved = {**{f"model.{k}": v for k, v in state["model"].items()},
             **{f"projection.{k}": v for k, v in state["projection"].items()},
             **{f"criterion.{k}": v for k, v in state["loss"].items()}}
    assert len(prints) == 2 and prints[0] == prints[1] == state_fingerprint(saved)
    assert [int(r["step"]) for r in _rows(out)] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_restart_after_a_rank_dies(videos, tmp_path):
    # rank 1 dies right after step 3 (a step callback installed by the test-only launcher); the
    # elastic restart resumes from checkpoint-2 and must end where an uninterrupted run ends
    args = ["--data", str(videos / "train.txt"), "--resume", "auto", *FAST, "optim.max_steps=5"]
    ref, out = tmp_path / "ref", tmp_path / "restarted"
    r = _torchrun(["--max-restarts", "1", "--nproc_per_node", "2", str(ROOT / "tests" / "pretrain_launcher.py"),
                   "--crash-at", "3:1", "--output-dir", str(out), *args])
    assert r.returncode == 0, r.stderr[-3000:]
    state = ck.load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 5 and state["provenance"]["resumed_from"].endswith("checkpoint-2.pt")
    assert [int(r["step"]) for r in _rows(out)] == [1, 2, 3, 4, 5]
    r = _torchrun(["--nproc_per_node", "2", "-m", "sigma.pretrain", "--output-dir", str(ref), *args])
    assert r.returncode == 0, r.stderr[-3000:]
    want = ck.load_checkpoint(ref / "checkpoints" / "last.pt")
    for key in ("model", "projection", "loss"):
        _assert_same_tensors(want[key], state[key], key)


def _free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _trained(out):
    """(saved trained tensors by name, metrics rows) of a run's last checkpoint."""
    state = ck.load_checkpoint(out / "checkpoints" / "last.pt")
    tensors = {**{f"model.{k}": v for k, v in state["model"].items()},
               **{f"projection.{k}": v for k, v in state["projection"].items()},
               **{f"criterion.{k}": v for k, v in state["loss"].items()}}
    return state, tensors, _rows(out)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_on_localhost_equal_one_node_and_one_process(videos, tmp_path):
    """Two torchrun "nodes" (one process each, c10d rendezvous on 127.0.0.1, gloo) train bitwise
    like one node with two processes, and like one process on the same global batch within the
    tolerances of tests/test_distributed.py."""
    steps = 2
    args = ["-m", "sigma.pretrain", "--data", str(videos / "train.txt"), *FAST, f"optim.max_steps={steps}"]
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(rank), "--rdzv-backend", "c10d", "--rdzv-id", "sigma-two-nodes",
                               "--rdzv-endpoint", f"127.0.0.1:{port}", *args, "--output-dir", str(tmp_path / "nodes")],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    r = _torchrun(["--nproc-per-node", "2", *args, "--output-dir", str(tmp_path / "one_node")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert main(["--data", str(videos / "train.txt"), "--output-dir", str(tmp_path / "one_process"), *FAST,
                 f"optim.max_steps={steps}", "optim.batch_size=4"]) == 0
    two_nodes, a, rows_a = _trained(tmp_path / "nodes")
    one_node, b, rows_b = _trained(tmp_path / "one_node")
    one_proc, c, rows_c = _trained(tmp_path / "one_process")
    assert two_nodes["provenance"]["world_size"] == one_node["provenance"]["world_size"] == 2
    assert two_nodes["rank_fingerprints"] == one_node["rank_fingerprints"]
    assert len(set(two_nodes["rank_fingerprints"])) == 1 and two_nodes["rank_fingerprints"][0] == state_fingerprint(a)
    _assert_same_tensors(a, b)
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    # one process with the same global batch (4 clips: the two ranks' shares) and the same lr
    assert one_proc["provenance"]["peak_lr"] == two_nodes["provenance"]["peak_lr"]
    for ra, rc in zip(rows_a, rows_c, strict=True):
        assert float(ra["loss"]) == pytest.approx(float(rc["loss"]), rel=1e-5, abs=1e-5)
    for name, w in c.items():
        torch.testing.assert_close(a[name], w, rtol=1e-5, atol=1e-5, msg=name)


def test_pixel_objective_matches_hf_videomae_norm_pix_loss():
    transformers = pytest.importorskip("transformers")
    from sigma.masking import tube_mask
    from sigma.models import create_projection
    from sigma.pretrain.objectives import PretrainModule

    config = transformers.VideoMAEConfig(
        image_size=32, patch_size=16, num_channels=3, num_frames=4, tubelet_size=2, hidden_size=32,
        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, decoder_hidden_size=32,
        decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64,
        norm_pix_loss=True, use_mean_pooling=False)
    torch.manual_seed(0)
    hf = transformers.VideoMAEForPreTraining(config).eval()
    video = torch.randn(3, 3, 4, 32, 32)  # (B, C, T, H, W), ImageNet-normalised scale
    mask = tube_mask(3, (2, 2, 2), 0.5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hf(pixel_values=video.transpose(1, 2), bool_masked_pos=mask)

    class HFPredictions(torch.nn.Module):
        def forward(self, v, m):
            return hf(pixel_values=v.transpose(1, 2), bool_masked_pos=m).logits

    module = PretrainModule("pixel", HFPredictions(), create_projection("pixels", tube_size=(2, 16, 16)))
    with torch.no_grad():
        loss, pred, target = module(video, mask)
    assert target.shape == pred.shape == (3, 4, 2 * 16 * 16 * 3)
    torch.testing.assert_close(loss, out.loss, rtol=1e-5, atol=1e-6)
