"""Pieces of the pretraining CLI that need no video model: configs, schedule, optimizer groups,
sampler / per-item seeding for exact resume, checkpoint files, collapse measures."""
import math
import random

import numpy as np
import pytest
import torch

from sigma.diagnostics import feature_collapse_stats
from sigma.engine import checkpoints as eck
from sigma.engine.distributed import ResumableDistributedSampler
from sigma.engine.files import PRETRAIN_FORMAT
from sigma.pretrain import checkpoint as ck
from sigma.pretrain.config import ConfigError, available_configs, load_config

# --- configs ------------------------------------------------------------------------------------


def test_shipped_configs_carry_the_recipe():
    names = available_configs()
    for size in ("s", "b"):
        for ds in ("k400", "ssv2"):
            for proj in ("mlp", "dino"):
                assert f"vit_{size}_{ds}_{proj}" in names
    for name in names:
        cfg = load_config(name)
        o, p, d = cfg["objective"], cfg["optim"], cfg["data"]
        if name == "tiny":
            continue
        assert o["name"] == "sigma" and o["num_prototypes"] == 3000 and o["sinkhorn_iterations"] == 10
        assert o["temperature"] == 0.1 and o["targets"] == "hard"
        assert o["epsilon"] == (0.03 if name.startswith("vit_b_ssv2") else 0.05)
        assert p["epochs"] == 800 and p["base_lr"] == 1.5e-4 and p["weight_decay"] == 0.05
        assert p["betas"] == [0.9, 0.95] and cfg["amp"] == "auto"
        assert (d["num_frames"], d["img_size"], d["tubelet_size"], d["patch_size"]) == (16, 224, 2, 16)
        assert d["mask_ratio"] == 0.9
        assert d["sampling_rate"] == (2 if "ssv2" in name else 4)
        assert d["flip"] is ("k400" in name)
        assert cfg["projection"]["out_dim"] == (256 if name.endswith("mlp") else 768)
        size = "small" if name.startswith("vit_s") else "base"
        assert cfg["model"]["name"] == f"sigma_vit_{size}_patch16"


def test_tiny_config_suits_its_token_count():
    cfg = load_config("tiny")
    d = cfg["data"]
    grid = (d["num_frames"] // d["tubelet_size"], d["img_size"] // d["patch_size"], d["img_size"] // d["patch_size"])
    masked = grid[0] * int(d["mask_ratio"] * grid[1] * grid[2])
    m = masked * cfg["optim"]["batch_size"]
    # every prototype can receive several tokens of a step under the equipartition
    assert m / cfg["objective"]["num_prototypes"] >= 4


def test_overrides_and_unknown_keys(tmp_path):
    cfg = load_config("vit_b_ssv2_dino", ["optim.batch_size=8", "projection.kwargs.weights=/x/dino.pth",
                                          "optim.betas=[0.9, 0.99]", "optim.clip_grad=null"])
    assert cfg["optim"]["batch_size"] == 8 and cfg["projection"]["kwargs"] == {"weights": "/x/dino.pth"}
    assert cfg["optim"]["betas"] == [0.9, 0.99] and cfg["optim"]["clip_grad"] is None
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.batchsize'.*optim\.batch_size"):
        load_config("tiny", ["optim.batchsize=3"])
    with pytest.raises(ConfigError, match="unknown config key 'nonsense'"):
        load_config("tiny", ["nonsense=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("tiny", ["optim.batch_size"])
    with pytest.raises(ConfigError, match="'data.mask_ratio'"):
        load_config("tiny", ["data.mask_ratio=1.0"])
    with pytest.raises(ConfigError, match="'optim.batch_size' must be a positive integer"):
        load_config("tiny", ["optim.batch_size=0"])
    with pytest.raises(ConfigError, match="unknown config 'no_such_config'"):
        load_config("no_such_config")
    user = tmp_path / "mine.yaml"
    user.write_text("inherit: vit_s_ssv2_mlp\noptim:\n  epochs: 3\n  warmpu_epochs: 1\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: unknown config key 'optim\.warmpu_epochs'"):
        load_config(str(user))
    user.write_text("inherit: vit_s_ssv2_mlp\noptim:\n  epochs: 3\n")
    cfg = load_config(str(user))
    assert cfg["optim"]["epochs"] == 3 and cfg["data"]["sampling_rate"] == 2 and cfg["objective"]["epsilon"] == 0.05


def test_cli_reports_unknown_key(capsys):
    from sigma.pretrain.cli import main
    assert main(["--data", "x.txt", "--output-dir", "out", "optim.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optim.nope'" in err
    # overrides may sit between the options (intermixed), and still reach the config check
    assert main(["--data", "x.txt", "optim.nope=1", "--output-dir", "out", "data.nope=2"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_scientific_notation_in_overrides_and_files(tmp_path):
    """YAML 1.1 alone reads `1e-4` as a string; both spellings must give floats."""
    cfg = load_config("tiny", ["optim.base_lr=1e-4", "objective.epsilon=3E-2", "optim.min_lr=1.0e-6"])
    assert cfg["optim"]["base_lr"] == 1e-4 and cfg["objective"]["epsilon"] == 0.03 and cfg["optim"]["min_lr"] == 1e-6
    user = tmp_path / "sci.yaml"
    user.write_text("inherit: tiny\noptim:\n  base_lr: 2e-3\n")
    assert load_config(str(user))["optim"]["base_lr"] == 2e-3
    with pytest.raises(ConfigError, match="'optim.base_lr' must be a finite number"):
        load_config("tiny", ["optim.base_lr=fast"])


def test_cli_resume_from_an_unreadable_file_is_one_line(tmp_path, capsys):
    from sigma.pretrain.cli import main
    bad = tmp_path / "bytes.pth"
    bad.write_bytes(bytes(range(256)) * 4)
    from sigma.data import make_synthetic_dataset
    make_synthetic_dataset(tmp_path / "data", videos=4, seed=0)
    code = main(["--data", str(tmp_path / "data" / "train.txt"), "--output-dir", str(tmp_path / "o"),
                 "--resume", str(bad), "optim.batch_size=1", "data.num_workers=0"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m sigma.pretrain: error: --resume") and "bytes.pth" in err and "Traceback" not in err


# --- optimizer and schedule ----------------------------------------------------------------------


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 3, 4))
        self.prototypes = torch.nn.Parameter(torch.randn(5, 4))

    def no_weight_decay(self):
        return {"pos_embed"}


def test_optimizer_groups_and_schedule():
    pytest.importorskip("timm")
    from sigma.engine.optim import build_optimizer, build_scheduler, scaled_lr
    from sigma.pretrain.objectives import PretrainModule

    class Proj(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

    module = PretrainModule("l2", _Toy(), Proj())
    opt = build_optimizer(module, 1e-3, 0.05, (0.9, 0.95))
    names = {id(p): n for n, p in module.named_parameters()}
    by_wd = {g["weight_decay"]: sorted(names[id(p)] for p in g["params"]) for g in opt.param_groups}
    assert by_wd[0.05] == ["model.lin.weight", "model.prototypes", "projection.fc.weight"]
    assert by_wd[0.0] == ["model.lin.bias", "model.norm.bias", "model.norm.weight", "model.pos_embed",
                          "projection.fc.bias"]
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
    assert scaled_lr(1.5e-4, 2048) == pytest.approx(1.2e-3)

    total, warm, lr_min, lr0 = 50, 10, 1e-5, 1e-6
    sched = build_scheduler(opt, total, warm, lr_min, lr0)
    got = []
    for step in range(total):
        sched.step_update(step)
        got.append(opt.param_groups[0]["lr"])
    want = [lr0 + (1e-3 - lr0) * s / warm if s < warm else
            lr_min + 0.5 * (1e-3 - lr_min) * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
            for s in range(total)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


# --- exact resume: sampler order -----------------------------------------


def test_sampler_resumes_mid_epoch():
    data = list(range(23))
    for world in (1, 2):
        for rank in range(world):
            full = ResumableDistributedSampler(data, world, rank, seed=3)
            full.set_epoch(4)
            order = list(full)
            assert len(order) == 23 // world
            part = ResumableDistributedSampler(data, world, rank, seed=3)
            part.set_epoch(4)
            part.set_start(5)
            assert list(part) == order[5:] and len(part) == len(order) - 5
    a, b = (ResumableDistributedSampler(data, 2, r, seed=0) for r in (0, 1))
    assert not set(a) & set(b)


# --- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_files_resume_discovery_and_rng(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    rng = eck.rng_state()
    want = (torch.rand(2), random.random(), np.random.rand())
    for step in (2, 4, 6):
        ck.save_checkpoint({"format": PRETRAIN_FORMAT, "step": step, "rng": rng, "w": torch.full((3,), step)},
                           tmp_path, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["checkpoint-4.pt", "checkpoint-6.pt", "last.pt"]  # no temp files left, oldest pruned
    (tmp_path / "checkpoints" / "checkpoint-6.pt").write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="checkpoint-6.pt"):
        path, state = ck.find_resume_checkpoint(tmp_path)
    assert path.name == "checkpoint-4.pt" and state["step"] == 4
    eck.set_rng_state(state["rng"])
    got = (torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(got[0], want[0]) and got[1:] == want[1:]
    assert ck.find_resume_checkpoint(tmp_path / "elsewhere") == (None, None)


def test_parameter_fingerprint():
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    b.load_state_dict(a.state_dict())
    assert eck.parameter_fingerprint(a) == eck.parameter_fingerprint(b)
    with torch.no_grad():
        b.bias[0] = torch.nextafter(b.bias[0], torch.tensor(1.0))
    assert eck.parameter_fingerprint(a) != eck.parameter_fingerprint(b)


# --- collapse measures ---------------------------------------------------------------------------


def test_feature_collapse_stats_against_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 16, dtype=torch.float64)
    got = feature_collapse_stats(x)
    xn = x.numpy()
    s = np.linalg.svd(xn - xn.mean(0), compute_uv=False)
    p = s / s.sum()
    assert float(got["erank"]) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-5)
    z = xn / np.linalg.norm(xn, axis=1, keepdims=True)
    assert float(got["std"]) == pytest.approx(float(z.std(0, ddof=1).mean()), rel=1e-5)
    collapsed = feature_collapse_stats(torch.ones(50, 8) + 1e-9 * torch.randn(50, 8, generator=g))
    assert float(collapsed["std"]) < 1e-6


def test_scheduler_of_a_tiny_run_does_not_warn(caplog):
    """Two steps with one of warmup leave one cosine step: timm would warn that its cosine has no
    effect (true, and expected at that size); the lr still follows warmup then the peak."""
    import logging

    from sigma.engine.optim import build_scheduler
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with caplog.at_level(logging.WARNING):
        sched = build_scheduler(opt, total_steps=2, warmup_steps=1, min_lr=0.0, warmup_lr=0.0)
    assert not [r for r in caplog.records if "no effect" in r.getMessage()]
    lrs = []
    for step in range(2):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [0.0, 0.1]


def test_a_restarted_torchelastic_attempt_keeps_its_keys_apart(monkeypatch):
    """After an elastic restart the process group joins through keys prefixed with the restart
    count, so the failed attempt's keys left in the agent's store are never read."""
    import datetime

    import torch.distributed as dist

    from sigma.engine.distributed import join_process_group
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    server = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=datetime.timedelta(seconds=30))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    join_process_group("gloo", 0, 1, datetime.timedelta(seconds=30))
    try:
        t = torch.ones(3)
        dist.all_reduce(t)
        assert torch.equal(t, torch.ones(3))
    finally:
        dist.destroy_process_group()
    if not hasattr(server, "list_keys"):
        pytest.skip("this torch's TCPStore cannot list its keys")
    keys = server.list_keys()
    assert keys and all(k.startswith("sigma/attempt_2/") for k in keys), keys
