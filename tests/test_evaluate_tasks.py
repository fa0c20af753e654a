"""The evaluation tasks end to end on the synthetic set with a tiny random-weight encoder: each writes
its JSON (and checkpoint / pictures); bad inputs are clear errors."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("av")
pytest.importorskip("sklearn")

# What the tasks read checkpoints with: a renamed or missing one must fail here, loudly.
from sigma.evaluate.__main__ import main  # noqa: E402
from sigma.models import create_model, create_projection, load_classifier, load_encoder, save_pretrained  # noqa: E402,F401

# tiny encoder: 4 frames at 32², tubes 2×16×16 -> 2×2×2 tokens
TINY = dict(num_frames=4, img_size=32)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from sigma.data import make_synthetic_dataset
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(root, videos=8, seed=0, frames=12, size=64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"  # a folder: model.safetensors + config.json
    save_pretrained(create_model("sigma_vit_tiny_patch16", **TINY), str(path))
    return str(path)


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_knn_cli_writes_result(synthetic, checkpoint, tmp_path):
    rc = main(["knn", "--checkpoint", checkpoint, "--data", synthetic["root"], "--output-dir", str(tmp_path),
               "--k", "3", "--no-progress"])
    assert rc == 0
    r = _read(tmp_path / "knn.json")
    assert 0.0 <= r["top1"] <= 100.0 and r["top5"] >= r["top1"]
    objects = next(iter(_read(synthetic["classes"]).values()))
    assert r["num_val"] == 2 and r["num_train"] == 6 and r["num_classes"] == len(objects)


def test_knn_cli_takes_two_lists_without_data(synthetic, checkpoint, tmp_path, capsys):
    root = Path(synthetic["root"])
    rc = main(["knn", "--checkpoint", checkpoint, "--train-list", str(root / "train.txt"), "--val-list",
               str(root / "val.txt"), "--output-dir", str(tmp_path), "--k", "3", "--no-progress"])
    assert rc == 0 and _read(tmp_path / "knn.json")["num_val"] == 2
    with pytest.raises(SystemExit):  # one list is not enough to go without --data
        main(["knn", "--checkpoint", checkpoint, "--train-list", str(root / "train.txt"), "--output-dir",
              str(tmp_path)])
    assert "--data is required" in capsys.readouterr().err


def test_features_cache_is_reused_across_tasks_and_labels_and_never_stale(synthetic, checkpoint, tmp_path,
                                                                          monkeypatch):
    import sigma.evaluate.probe as probe
    from sigma.evaluate import knn, linear
    calls = []
    real = probe.extract_pooled_features

    def counted(*args, **kwargs):
        calls.append(kwargs["tokens"])
        return real(*args, **kwargs)
    monkeypatch.setattr(probe, "extract_pooled_features", counted)
    cache, root = tmp_path / "cache", synthetic["root"]
    plain = knn(checkpoint, root, None, k=3, progress=False)
    assert calls == [False, False]  # train, val
    first = knn(checkpoint, root, None, k=3, progress=False, features_cache=str(cache))
    again = knn(checkpoint, root, None, k=3, progress=False, features_cache=str(cache))
    assert len(calls) == 4 and (first["top1"], first["top5"]) == (again["top1"], again["top5"]) == \
        (plain["top1"], plain["top5"])
    motion = linear(checkpoint, root, None, label_column=1, epochs=2, progress=False, features_cache=str(cache))
    assert len(calls) == 4 and motion["label_column"] == 1  # pooled features of both splits reused
    assert len(list(cache.glob("features-pooled-*.pt"))) == 2
    # another list is another key: extracted again
    other = tmp_path / "lists"
    other.mkdir()
    for name in ("train.txt", "val.txt"):
        lines = Path(root, name).read_text().splitlines()
        (other / name).write_text("\n".join(f"{Path(root, line.split()[0])} {' '.join(line.split()[1:])}"
                                            for line in lines[:-1]) + "\n")
    knn(checkpoint, str(other), None, k=3, progress=False, features_cache=str(cache))
    assert len(calls) == 6
    # a regenerated video (same list, new file) is another key: its split is extracted again
    video = Path(root, Path(root, "val.txt").read_text().split()[0])
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))
    knn(checkpoint, root, None, k=3, progress=False, features_cache=str(cache))
    assert len(calls) == 7
    # a folder the cache cannot be written to costs only time: a warning, and the result
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.warns(UserWarning, match="could not write the features cache"):
        unwritable = knn(checkpoint, root, None, k=3, progress=False, features_cache=str(blocker / "sub"))
    assert unwritable["top1"] == plain["top1"] and len(calls) == 9
    # a damaged cache file is extracted again (with a warning), never used
    for victim in cache.glob("features-pooled-*.pt"):
        victim.write_bytes(victim.read_bytes()[:-100] + bytes(100))
    with pytest.warns(UserWarning, match="unreadable"):
        redone = knn(checkpoint, root, None, k=3, progress=False, features_cache=str(cache))
    assert len(calls) == 11 and redone["top1"] == plain["top1"]


def test_linear_api_matches_json_and_writes_probe(synthetic, checkpoint, tmp_path):
    from sigma.evaluate import linear
    r = linear(checkpoint, synthetic["root"], tmp_path, epochs=3, progress=False)
    assert r["top1"] == _read(tmp_path / "linear.json")["top1"]
    probe = torch.load(tmp_path / "linear_probe.pt", weights_only=True)
    assert probe["state_dict"]["head.weight"].shape == (r["num_classes"], 192)


def test_finetune_runs_steps_and_writes_result_and_checkpoint(synthetic, checkpoint, tmp_path):
    from sigma.evaluate import finetune
    r = finetune(checkpoint, synthetic["root"], tmp_path, epochs=1, max_steps=2, batch_size=2, warmup_epochs=1,
                 test_clips=2, test_crops=1, progress=False, log_every=1, device="cpu")
    assert r["steps"] == 2 and np.isfinite(r["final_train_loss"]) and r["test_views"] == [2, 1]
    assert _read(tmp_path / "finetune.json")["top1"] == r["top1"]
    ck = torch.load(tmp_path / "checkpoints" / "finetune-last.pt", weights_only=True)
    assert ck["step"] == 2 and ck["model"]["head.weight"].shape[0] == r["num_classes"]
    assert (tmp_path / "finetune_metrics.csv").read_text().count("\n") == 3  # header + 2 steps


def test_finetune_resume_from_an_older_format_is_a_clear_error(synthetic, checkpoint, tmp_path):
    from sigma.evaluate import finetune
    old = tmp_path / "old.pt"
    torch.save({"format": "sigma-finetune-v1", "step": 2}, old)
    with pytest.raises(ValueError, match="older format .'sigma-finetune-v1'.*start a new run"):
        finetune(checkpoint, synthetic["root"], tmp_path / "run", max_steps=1, resume=str(old), epochs=1,
                 batch_size=2, test_clips=1, test_crops=1, progress=False, device="cpu")


@pytest.mark.slow
def test_finetune_runs_steps_and_resumes_exactly(synthetic, checkpoint, tmp_path):
    """4 steps in one go == 2 steps + resume + 2 steps (mid-epoch: 3 steps per epoch), bitwise on CPU."""
    from sigma.evaluate import finetune
    kw = dict(epochs=2, batch_size=2, warmup_epochs=1, test_clips=1, test_crops=1, progress=False, log_every=1,
              device="cpu")
    r = finetune(checkpoint, synthetic["root"], tmp_path / "a", max_steps=4, **kw)
    assert r["steps"] == 4 and np.isfinite(r["final_train_loss"])
    assert 0.0 <= _read(tmp_path / "a" / "finetune.json")["top1"] <= 100.0
    finetune(checkpoint, synthetic["root"], tmp_path / "b", max_steps=2, **kw)
    assert torch.load(tmp_path / "b" / "checkpoints" / "finetune-last.pt", weights_only=True)["step"] == 2
    finetune(checkpoint, synthetic["root"], tmp_path / "b", max_steps=4, resume="auto", **kw)
    a = torch.load(tmp_path / "a" / "checkpoints" / "finetune-last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "finetune-last.pt", weights_only=True)
    assert a["format"] == "sigma-finetune-v2" and a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_segment_on_synthetic_davis(synthetic, checkpoint, tmp_path):
    rc = main(["segment", "--checkpoint", checkpoint, "--data", synthetic["davis"], "--output-dir", str(tmp_path),
               "--split", "val", "--max-clips", "1", "--n-init", "2", "--no-progress"])
    assert rc == 0
    r = _read(tmp_path / "segment.json")
    assert 0.0 <= r["miou_clustering"] <= 1.0 and 0.0 <= r["miou_overclustering"] <= 1.0
    assert r["num_sequences"] == 2 and set(r["per_sequence"]) == {"clip00003", "clip00007"}
    assert r["settings"]["background"] == "class" and r["settings"]["kmeans"] == "torch"
    # scikit-learn's KMeans on the same clips: the same algorithm and draws, the same scores
    rc = main(["segment", "--checkpoint", checkpoint, "--data", synthetic["davis"], "--output-dir",
               str(tmp_path / "sk"), "--split", "val", "--max-clips", "1", "--n-init", "2", "--kmeans", "sklearn",
               "--no-progress"])
    sk = _read(tmp_path / "sk" / "segment.json")
    assert rc == 0 and sk["settings"]["kmeans"] == "sklearn"
    for key in ("miou_clustering", "miou_overclustering"):
        assert sk[key] == pytest.approx(r[key], abs=0.01)


def test_visualize_writes_pictures_of_documented_size(synthetic, checkpoint, tmp_path):
    from PIL import Image

    from sigma.data import sample_videos
    from sigma.evaluate import visualize
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,loss,lr,pred_std,loss_scale,videos_skipped\n1,8.0,0.1,0.5,,0\n2,7.5,0.2,0.4,,0\n"
                       "3,7.0,0.3,,,0\n")
    videos = sample_videos()
    video = videos.get("bikes") or os.path.join(synthetic["root"], "videos", "clip00000.mp4")
    r = visualize(checkpoint, video, tmp_path, metrics=metrics, k=3, sampling_rate=1)
    clip = r["clips"][0]
    png = np.asarray(Image.open(clip["png"]))
    assert png.shape[1] >= 1024 and png.shape[0] >= 2 * 256 and list(png.shape[:2]) == clip["png_size_hw"]
    assert png.std() > 0
    assert clip["rows"] == ["frames", "k-means k=3"]
    gif = Image.open(clip["gif"])
    # 2 rows side by side, each 32² panel upscaled by the smallest integer factor reaching 768 px wide (12),
    # under a 28-px title strip
    assert gif.n_frames == 4 and gif.size[0] >= 768 and gif.size[1] >= 256
    assert gif.size == (2 * 32 * 12, 32 * 12 + 28)
    frame = np.asarray(gif.convert("RGB"))[28:]
    assert (frame[:12, 24:36] == frame[0, 24]).all()  # nearest upscaling: one pixel became a flat 12×12 square
    curves = np.asarray(Image.open(r["training_curves"]["png"]))
    # loss, lr and pred_std change: 3 panels; loss_scale is never recorded and videos_skipped is constant
    assert curves.shape[:2] == (300, 3 * 400) and curves.std() > 0
    assert _read(tmp_path / "visualize.json")["clips"][0]["png"] == clip["png"]


def test_visualize_cli_lists_every_file_it_wrote(synthetic, checkpoint, tmp_path, capsys):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,loss\n1,8.0\n2,7.5\n")
    video = os.path.join(synthetic["root"], "videos", "clip00000.mp4")
    rc = main(["visualize", "--checkpoint", checkpoint, "--data", video, "--output-dir", str(tmp_path),
               "--metrics", str(metrics), "--k", "3", "--sampling-rate", "1", "--no-progress"])
    assert rc == 0
    files = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["files"]
    assert [os.path.splitext(f)[1] for f in files] == [".png", ".gif", ".png"]
    assert all(os.path.exists(f) for f in files)


def test_visualize_picture_names_are_distinct():
    from sigma.evaluate.visualization import picture_names
    assert picture_names(["a/x.mp4", "b/x.mp4", "c/y.mp4"]) == ["a_x", "b_x", "y"]
    assert picture_names(["a/x.mp4", "a/x.mp4", "a_x.mp4"]) == ["a_x", "a_x_2", "a_x_3"]


def test_visualize_same_file_name_in_two_folders_gets_two_pictures(synthetic, checkpoint, tmp_path):
    import shutil

    from sigma.evaluate import visualize
    for folder, clip in (("a", "clip00000"), ("b", "clip00001")):
        (tmp_path / folder).mkdir()
        shutil.copy(os.path.join(synthetic["root"], "videos", f"{clip}.mp4"), tmp_path / folder / "x.mp4")
    (tmp_path / "list.txt").write_text("a/x.mp4 0 0\nb/x.mp4 1 0\n")
    r = visualize(checkpoint, tmp_path / "list.txt", tmp_path / "out", metrics=None, k=3, sampling_rate=1,
                  progress=False)
    pngs = [c["png"] for c in r["clips"]]
    assert [os.path.basename(p) for p in pngs] == ["a_x_clusters.png", "b_x_clusters.png"]
    assert len({c["gif"] for c in r["clips"]}) == 2 and all(os.path.exists(p) for p in pngs)


def test_visualize_skips_an_unreadable_video_and_goes_on(synthetic, checkpoint, tmp_path, capsys):
    videos = os.path.join(synthetic["root"], "videos")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    (tmp_path / "list.txt").write_text(f"{videos}/clip00000.mp4 0\n{tmp_path}/bad.mp4 0\n{videos}/clip00001.mp4 0\n")
    args = ["--checkpoint", checkpoint, "--k", "3", "--sampling-rate", "1", "--no-progress"]
    rc = main(["visualize", *args, "--data", str(tmp_path / "list.txt"), "--output-dir", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert rc == 0 and "bad.mp4" in err
    r = _read(tmp_path / "o" / "visualize.json")
    assert [os.path.basename(c["video"]) for c in r["clips"]] == ["clip00000.mp4", "clip00001.mp4"]
    assert [c["video"] for c in r["skipped"]] == [str(tmp_path / "bad.mp4")]
    assert json.loads(out.strip().splitlines()[-1])["skipped"] == [str(tmp_path / "bad.mp4")]
    # none readable: an error naming the path given (a list, or the one file), and no visualize.json
    (tmp_path / "bad.txt").write_text(f"{tmp_path}/bad.mp4 0\n")
    for data in (tmp_path / "bad.txt", tmp_path / "bad.mp4"):
        rc = main(["visualize", *args, "--data", str(data), "--output-dir", str(tmp_path / "n")])
        err = capsys.readouterr().err
        assert rc == 2 and f"no readable video in {str(data)!r}" in err and "<records>" not in err
    assert not (tmp_path / "n" / "visualize.json").exists()


def test_visualize_pictures_are_written_atomically(tmp_path, monkeypatch):
    import matplotlib.figure
    from PIL import Image

    from sigma.evaluate.visualization import _save_figure, _save_gif, plot_training_curves

    def half_written(self, path, *args, **kwargs):  # a writer killed half-way through the file
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError("killed")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_written)
    monkeypatch.setattr(Image.Image, "save", half_written)
    (tmp_path / "metrics.csv").write_text("step,loss\n1,8.0\n2,7.5\n")
    rows = [np.zeros((2, 16, 16, 3), dtype=np.uint8)]
    writes = {"clusters.png": lambda p: _save_figure(rows, ["frames"], [None], 2, p),
              "clusters.gif": lambda p: _save_gif(rows, ["frames"], p),
              "curves.png": lambda p: plot_training_curves(tmp_path / "metrics.csv", p)}
    for name, write in writes.items():
        (tmp_path / name).write_bytes(b"old picture")
        with pytest.raises(OSError, match="killed"):
            write(tmp_path / name)
        assert (tmp_path / name).read_bytes() == b"old picture"  # the old one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clusters.gif", "clusters.png", "curves.png", "metrics.csv"]


def test_visualize_shows_sinkhorn_prototypes_of_a_pretraining_checkpoint(synthetic, tmp_path):
    from PIL import Image

    from sigma.evaluate import visualize
    torch.manual_seed(0)
    model = create_model("sigma_vit_tiny_patch16", out_dim=32, **TINY)
    proj = create_projection("mlp", out_dim=32, tube_size=(2, 16, 16))
    ckpt = {"format": "sigma-pretrain-v1", "step": 3, "epoch": 0,
            "model_config": {"name": "sigma_vit_tiny_patch16", "out_dim": 32, **TINY},
            "projection_config": {"kind": "mlp", "out_dim": 32, "tube_size": [2, 16, 16]},
            "model": model.state_dict(), "projection": proj.state_dict(),
            "loss": {"prototypes": torch.randn(16, 32)}, "loss_config": {"epsilon": 0.05, "sinkhorn_iterations": 3}}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    (run / "metrics.csv").write_text("step,loss\n1,5.0\n2,4.0\n")
    r = visualize(str(run / "checkpoints" / "last.pt"), os.path.join(synthetic["root"], "videos", "clip00000.mp4"),
                  tmp_path / "out", k=3, sampling_rate=1)
    assert r["prototypes"] == "shown (row 3)"
    clip = r["clips"][0]
    assert clip["rows"] == ["frames", "k-means k=3", "Sinkhorn prototypes (K=16)"]
    gif = np.asarray(Image.open(clip["gif"]).convert("RGB"))[28:]
    w = gif.shape[1] // 3
    assert gif.shape[1] >= 768 and not np.array_equal(gif[:, w:2 * w], gif[:, 2 * w:])  # its own picture
    assert r["training_curves"]["metrics"].endswith("metrics.csv")  # found next to the run's checkpoints


def test_bad_inputs_are_clear_errors(synthetic, checkpoint, tmp_path, capsys):
    from safetensors.torch import save_file

    from sigma.evaluate import knn, segment
    # a list with an unknown label
    bad = tmp_path / "lists"
    bad.mkdir()
    (bad / "train.txt").write_text(open(synthetic["train"]).read())
    (bad / "val.txt").write_text(f"{synthetic['root']}/videos/clip00003.mp4 9 0\n")
    (bad / "classes.json").write_text(open(synthetic["classes"]).read())
    with pytest.raises(ValueError, match="label 9, unknown"):
        knn(checkpoint, bad, progress=False)
    # a checkpoint of another architecture (an image model's weights)
    other = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, str(other))
    rc = main(["knn", "--checkpoint", str(other), "--data", synthetic["root"], "--output-dir", str(tmp_path)])
    assert rc == 2 and "--checkpoint" in capsys.readouterr().err
    # a mask folder that does not match the frames
    davis = tmp_path / "davis"
    for sub in ("JPEGImages", "Annotations"):
        os.makedirs(davis / sub / "seq")
    src = synthetic["davis"]
    for i in range(4):
        os.link(f"{src}/JPEGImages/clip00000/{i:05d}.jpg", davis / "JPEGImages" / "seq" / f"{i:05d}.jpg")
        if i != 2:
            os.link(f"{src}/Annotations/clip00000/{i:05d}.png", davis / "Annotations" / "seq" / f"{i:05d}.png")
    with pytest.raises(ValueError, match="does not match the frames.*00002"):
        segment(checkpoint, davis, progress=False)


def _davis(root, synthetic, sequences, frames=4):
    """A DAVIS-layout folder of the synthetic set's first frames: {name: source clip}, linked."""
    src = synthetic["davis"]
    for name, clip in sequences.items():
        for sub in ("JPEGImages", "Annotations"):
            os.makedirs(root / sub / name)
        for i in range(frames):
            os.link(f"{src}/JPEGImages/{clip}/{i:05d}.jpg", root / "JPEGImages" / name / f"{i:05d}.jpg")
            os.link(f"{src}/Annotations/{clip}/{i:05d}.png", root / "Annotations" / name / f"{i:05d}.png")
    return root


def _blank_masks(folder):
    """Every mask of a sequence all background (the file replaced, not the linked original)."""
    from PIL import Image

    for png in folder.iterdir():
        png.unlink()
        Image.fromarray(np.zeros((64, 64), np.uint8), mode="L").save(png)


def test_segment_skips_and_counts_clips_with_one_class(synthetic, checkpoint, tmp_path, capsys):
    """A clip with one class scored a perfect 1.0 (k = 1); now it is skipped, counted and reported."""
    from sigma.evaluate import segment

    davis = _davis(tmp_path / "davis", synthetic, {"objects": "clip00000", "blank": "clip00001"})
    _blank_masks(davis / "Annotations" / "blank")
    r = segment(checkpoint, davis, tmp_path / "out", n_init=1, progress=False)
    err = capsys.readouterr().err
    assert r["num_clips"] == 1 and r["num_skipped_clips"] == 1 and set(r["per_sequence"]) == {"objects"}
    assert r["skipped_clips"][0]["sequence"] == "blank" and "fewer than 2 classes" in r["skipped_clips"][0]["reason"]
    assert _read(tmp_path / "out" / "segment.json")["num_skipped_clips"] == 1
    assert "skipped 1 of 2 clips with nothing to segment" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="nothing to score: none of the 1 clips.*'blank'.*fewer than 2 classes"):
        segment(checkpoint, davis, sequences=["blank"], n_init=1, progress=False)
    # background as the ignore index: one object is one class, in every clip
    rc = main(["segment", "--checkpoint", checkpoint, "--data", str(davis), "--output-dir", str(tmp_path / "o2"),
               "--ignore-index", "0", "--no-progress"])
    assert rc == 2 and "error: nothing to score" in capsys.readouterr().err


def test_segment_overclustering_k_above_the_feature_points_is_a_clear_error(synthetic, checkpoint, tmp_path, capsys):
    """k = 100000 was silently clamped to the clip's points while segment.json recorded 100000."""
    davis = _davis(tmp_path / "davis", synthetic, {"objects": "clip00000"})
    rc = main(["segment", "--checkpoint", checkpoint, "--data", str(davis), "--output-dir", str(tmp_path / "o"),
               "--overclustering-k", "100000", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--overclustering-k" in err and "--size 28" in err and "1568 feature points" in err


def test_segment_sequences_by_bare_name_and_never_an_empty_list(synthetic, checkpoint, tmp_path, capsys):
    davis = _davis(tmp_path / "davis", synthetic, {"one": "clip00000", "two": "clip00001"})
    rc = main(["segment", "--checkpoint", checkpoint, "--data", str(davis), "--output-dir", str(tmp_path / "o"),
               "--sequences", "two", "--n-init", "1", "--no-progress"])
    assert rc == 0 and set(_read(tmp_path / "o" / "segment.json")["per_sequence"]) == {"two"}
    rc = main(["segment", "--checkpoint", checkpoint, "--data", str(davis), "--output-dir", str(tmp_path / "o"),
               "--sequences", "[]", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--sequences): expected one or more sequence names" in err


@pytest.mark.slow
@pytest.mark.distributed
def test_finetune_under_torchrun_two_ranks(synthetic, checkpoint, tmp_path):
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "sigma.evaluate", "finetune",
           "--checkpoint", checkpoint, "--data", synthetic["root"], "--output-dir", str(tmp_path), "--epochs", "1",
           "--batch-size", "2", "--warmup-epochs", "0", "--test-views", "1", "1", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = _read(tmp_path / "finetune.json")
    assert r["world_size"] == 2 and r["steps"] == 1  # 6 clips / 2 ranks / batch 2 -> 1 full step per epoch
    assert r["num_samples"] == 2  # both val clips scored once across the two ranks


def test_missing_data_path_is_named_in_the_error(tmp_path):
    from sigma.evaluate.common import resolve_split_lists
    with pytest.raises(FileNotFoundError, match=r"--data '.*nodir' does not exist"):
        resolve_split_lists(tmp_path / "nodir")
