"""What the study needs: the untrained encoder a pretraining run starts from (`sigma.pretrain.initial`,
evaluated as a checkpoint), the attentive probe (pooling=attentive) and few-label fine-tuning
(label_fraction)."""
import json
import random
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sigma.evaluate.common import stratified_subset
from sigma.evaluate.metrics import classification_metrics, linear_probe_scores, train_linear_probe
from sigma.pretrain.config import ConfigError
from sigma.pretrain.initial import initial_encoder
from sigma.pretrain.initial import main as initial_main

# The tiny config at the test sets' size: 4 frames at 32², 2×2×2 tokens.
TINY_YAML = "inherit: tiny\ndata:\n  num_frames: 4\n  img_size: 32\n"


def _records(counts):
    """Records with label column 0 = class index, `counts[c]` of class c, interleaved."""
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    random.Random(0).shuffle(labels)
    return [SimpleNamespace(path=f"v{i}.mp4", labels=[y, 0]) for i, y in enumerate(labels)]


def test_stratified_subset_has_the_per_class_counts_and_keeps_the_order():
    recs = _records([10, 20, 5, 1])
    sub = stratified_subset(recs, 0, 0.2, seed=3)
    # 20% of 10, 20, 5 clips; a class of one keeps its one clip
    assert Counter(r.labels[0] for r in sub) == {0: 2, 1: 4, 2: 1, 3: 1}
    positions = [recs.index(r) for r in sub]
    assert positions == sorted(positions)


def test_stratified_subset_is_deterministic_per_seed():
    recs = _records([30, 30, 30])
    pick = [[r.path for r in stratified_subset(recs, 0, 0.1, seed=s)] for s in (0, 0, 1)]
    assert pick[0] == pick[1]
    assert pick[0] != pick[2]
    assert stratified_subset(recs, 0, 1.0, seed=0) == recs


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_stratified_subset_rejects_a_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match=r"label_fraction must be in \(0, 1\]"):
        stratified_subset(_records([4]), 0, fraction, seed=0)


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny32.yaml"
    path.write_text(TINY_YAML)
    return str(path)


def test_initial_encoder_is_the_encoder_a_pretraining_run_with_that_seed_starts_from(tiny_yaml):
    from sigma.models import create_model, create_projection

    torch.manual_seed(123)
    random.seed(9)
    np.random.seed(9)
    before = (torch.rand(1), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(9)
    np.random.seed(9)
    enc = initial_encoder(tiny_yaml, 7)
    assert (torch.rand(1), random.random(), np.random.rand()) == before  # the caller's streams are untouched
    # As the trainer builds it (tiny: mlp projection of out_dim 64 first, then the model), by hand:
    torch.manual_seed(7)
    create_projection(kind="mlp", tube_size=[2, 16, 16], out_dim=64)
    fresh = create_model("sigma_vit_tiny_patch16", out_dim=64, num_frames=4, img_size=32).encoder
    ours, theirs = enc.state_dict(), fresh.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    other = initial_encoder(tiny_yaml, 8).state_dict()
    assert not torch.equal(other["patch_embed.proj.weight"], ours["patch_embed.proj.weight"])


def test_initial_encoder_is_the_trainers_step_zero_encoder(tiny_yaml, tmp_path):
    pytest.importorskip("av")
    from sigma.data import make_synthetic_dataset
    from sigma.engine.distributed import init_distributed
    from sigma.pretrain import load_config
    from sigma.pretrain.trainer import setup

    paths = make_synthetic_dataset(tmp_path / "set", videos=4, seed=0, frames=8, size=64)
    cfg = load_config(tiny_yaml, [("seed", 5), ("device", "cpu"), ("data.num_workers", 0), ("optim.batch_size", 1)])
    start = setup(cfg, paths["train"], tmp_path / "run", init_distributed("cpu")).module.model.encoder.state_dict()
    ours = initial_encoder(tiny_yaml, 5).state_dict()
    assert all(torch.equal(ours[k], start[k]) for k in start)


def test_initial_encoder_names_a_bad_config(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--config 'no-such-config'"):
        initial_encoder("no-such-config", 0)
    with pytest.raises(SystemExit) as exit_:
        initial_main(["--config", "no-such-config", "--seed", "0", "--output-dir", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m sigma.pretrain.initial: error: --config 'no-such-config'")
    assert not (tmp_path / "out").exists()


def test_initial_cli_writes_an_encoder_load_encoder_reads(tiny_yaml, tmp_path, capsys):
    from sigma.models import load_encoder

    assert initial_main(["--config", tiny_yaml, "--seed", "4", "--output-dir", str(tmp_path / "init")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "init")
    saved, fresh = load_encoder(str(tmp_path / "init")).eval(), initial_encoder(tiny_yaml, 4)
    video = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(saved.forward_features(video), fresh.forward_features(video))


def _where_not_what(n, gen, tokens=8, dim=16):
    """Token sets (n, tokens, dim) whose class is told only by which direction (a or b) sits on a
    token, with its negative on another token: every set's token mean is the same (noise aside),
    so a mean-pooled probe is at chance and a probe that looks at single tokens is not."""
    a, b = torch.eye(dim)[0] * 3, torch.eye(dim)[1] * 3
    y = torch.randint(0, 2, (n,), generator=gen)
    x = 0.1 * torch.randn(n, tokens, dim, generator=gen)
    for i in range(n):
        pos, neg = torch.randperm(tokens, generator=gen)[:2].tolist()
        v = a if y[i] == 0 else b
        x[i, pos] += v
        x[i, neg] -= v
    return x, y


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is fastest, and on a busy machine two threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_attentive_probe_reads_what_mean_pooling_averages_away(one_thread):
    gen = torch.Generator().manual_seed(0)
    xtr, ytr = _where_not_what(512, gen)
    xva, yva = _where_not_what(256, gen)
    att, _ = train_linear_probe(xtr, ytr, 2, epochs=20, batch_size=64, lr=3e-3, seed=0, pooling="attentive")
    mean, _ = train_linear_probe(xtr.mean(1), ytr, 2, epochs=20, batch_size=64, lr=3e-3, seed=0)
    att_top1 = classification_metrics(linear_probe_scores(att, xva), yva, 2)["top1"]
    mean_top1 = classification_metrics(linear_probe_scores(mean, xva.mean(1)), yva, 2)["top1"]
    assert att_top1 >= 97.0
    assert mean_top1 <= 65.0


def test_attentive_probe_is_deterministic_per_seed_and_checks_its_input(one_thread):
    gen = torch.Generator().manual_seed(1)
    x, y = _where_not_what(64, gen)
    p1, _ = train_linear_probe(x, y, 2, epochs=2, seed=5, pooling="attentive")
    p2, _ = train_linear_probe(x, y, 2, epochs=2, seed=5, pooling="attentive")
    assert all(torch.equal(a, b) for a, b in zip(p1.state_dict().values(), p2.state_dict().values()))
    with pytest.raises(ValueError, match=r"attentive probe expects token features \(N, L, C\)"):
        train_linear_probe(x.mean(1), y, 2, epochs=1, pooling="attentive")
    with pytest.raises(ValueError, match="heads: the attentive probe's 3 heads must divide the feature width 16"):
        train_linear_probe(x, y, 2, epochs=1, pooling="attentive", heads=3)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    pytest.importorskip("av")
    from sigma.data import make_synthetic_dataset
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(root, videos=8, seed=0, frames=12, size=64)


def test_linear_attentive_on_an_initial_encoder_cli(synthetic, tiny_yaml, tmp_path):
    from sigma.evaluate.__main__ import main

    init = str(tmp_path / "init")
    assert initial_main(["--config", tiny_yaml, "--seed", "4", "--output-dir", init]) == 0
    rc = main(["linear", "--checkpoint", init, "--data", synthetic["root"], "--output-dir", str(tmp_path),
               "--pooling", "attentive", "--epochs", "2", "--no-progress"])
    assert rc == 0
    r = json.loads((tmp_path / "linear.json").read_text())
    assert r["pooling"] == "attentive" and 0.0 <= r["top1"] <= 100.0
    probe = torch.load(tmp_path / "linear_probe.pt", weights_only=True)
    assert probe["pooling"] == "attentive" and probe["state_dict"]["query"].shape == (1, 1, 192)


def test_finetune_trains_on_the_label_fraction_from_scratch(synthetic, tiny_yaml, tmp_path):
    from sigma.data import read_video_list
    from sigma.evaluate import finetune
    from sigma.pretrain.initial import export_initial_encoder

    train = read_video_list(synthetic["root"] + "/train.txt")
    counts = Counter(rec.labels[0] for rec in train)
    init = export_initial_encoder(tiny_yaml, 1, tmp_path / "init")
    r = finetune(init, synthetic["root"], tmp_path / "run", label_fraction=0.5,
                 epochs=1, max_steps=1, batch_size=2, test_clips=1, test_crops=1, progress=False, device="cpu")
    assert r["num_train"] == sum(max(1, round(0.5 * n)) for n in counts.values()) < len(train)
    assert r["label_fraction"] == 0.5 and np.isfinite(r["final_train_loss"])
