"""Rows of issue 21's table about evaluation and unreadable lists, each as the user meets it: the
`python -m sigma.evaluate` / `python -m sigma.pretrain` command lines (their `main`, in process)
on the synthetic set with a tiny random-weight encoder (4 frames at 32², 8 tokens)."""
import json
import os

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("av")

from sigma.data import NoReadableVideoError, VideoDataset, collate_readable, read_video_list  # noqa: E402
from sigma.evaluate.__main__ import main as evaluate_main  # noqa: E402
from sigma.pretrain.cli import main as pretrain_main  # noqa: E402

TINY = dict(num_frames=4, img_size=32)
# a pretraining run small enough for a second: one block each way, 4 frames at 32², 4 prototypes
FAST = ["model.kwargs.depth=1", "model.kwargs.decoder_depth=1", "data.num_frames=4", "data.img_size=32",
        "data.mask_ratio=0.5", "data.num_workers=0", "objective.num_prototypes=4", "projection.out_dim=16",
        "projection.kwargs.hidden_dims=[64,64]", "optim.epochs=1", "optim.warmup_epochs=0", "log.tensorboard=false"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from sigma.data import make_synthetic_dataset
    root = tmp_path_factory.mktemp("synthetic")
    out = make_synthetic_dataset(root, videos=8, seed=0, frames=12, size=64, davis=False)
    (root / "videos" / "garbage_a.mp4").write_bytes(os.urandom(2000))
    (root / "videos" / "garbage_b.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from sigma.models import create_model, save_pretrained
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_pretrained(create_model("sigma_vit_tiny_patch16", **TINY), str(path))
    return str(path)


def _lists(folder, synthetic, train_extra=(), val_extra=()):
    """A copy of the synthetic train/val lists (absolute paths) with `*_extra` lines put first."""
    folder.mkdir()
    for split, extra in (("train", train_extra), ("val", val_extra)):
        lines = [f"{r.path} {' '.join(map(str, r.labels))}" for r in read_video_list(synthetic[split])]
        (folder / f"{split}.txt").write_text("\n".join([*extra, *lines]) + "\n")
    (folder / "classes.json").write_text(open(synthetic["classes"]).read())
    return folder


def _knn(checkpoint, data, out, *extra):
    return evaluate_main(["knn", "--checkpoint", checkpoint, "--data", str(data), "--output-dir", str(out),
                          "--no-progress", "--device", "cpu", *extra])


def _read(path):
    with open(path) as f:
        return json.load(f)


def _one_line_error(err, prefix):
    """The error line of stderr (warnings and log lines may precede it), checked to be the last and only one."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(prefix), err
    return last


def test_knn_on_a_nan_checkpoint_is_a_clear_error(synthetic, tmp_path, capsys):
    """Row: `knn` on a checkpoint whose weights are all NaN reported top-1 16.7 / top-5 100, exit 0."""
    from sigma.models import create_model, save_pretrained
    model = create_model("sigma_vit_tiny_patch16", **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_pretrained(model, str(tmp_path / "nan"))
    assert _knn(str(tmp_path / "nan"), synthetic["root"], tmp_path / "eval") == 2
    line = _one_line_error(capsys.readouterr().err, "python -m sigma.evaluate knn: error: --checkpoint")
    assert "non-finite features" in line and "6 of 6 train clips" in line and "parameter tensors are not finite" in line
    assert not (tmp_path / "eval" / "knn.json").exists()


def test_unreadable_clips_are_skipped_and_counted_never_replaced(synthetic, checkpoint, tmp_path, capsys):
    """Row: unreadable val videos were each replaced by the next record, so duplicates were scored.
    Lists with unreadable entries put first score exactly what the lists without them score."""
    garbage_a, garbage_b = (os.path.join(synthetic["root"], "videos", f"garbage_{c}.mp4") for c in "ab")
    missing = os.path.join(synthetic["root"], "videos", "missing.mp4")
    clean = _lists(tmp_path / "clean", synthetic)
    dirty = _lists(tmp_path / "dirty", synthetic, train_extra=[f"{garbage_a} 0 0"],
                   val_extra=[f"{garbage_b} 1 1", f"{missing} 2 2"])
    assert _knn(checkpoint, clean, tmp_path / "e1", "--k", "3") == 0
    assert _knn(checkpoint, dirty, tmp_path / "e2", "--k", "3", "--num-workers", "1") == 0
    want, got = _read(tmp_path / "e1" / "knn.json"), _read(tmp_path / "e2" / "knn.json")
    assert want["num_samples"] == want["num_val"] == 2 and want["num_skipped"] == 0 and want["skipped_files"] == []
    assert got["num_samples"] == got["num_val"] == 2 and got["num_train"] == 6
    assert got["num_skipped"] == 3 and got["skipped_files"] == [garbage_a, garbage_b, missing]
    for key in ("top1", "top5", "mean_class_accuracy"):
        assert got[key] == want[key], key
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top1"] == got["top1"]


def test_a_list_with_no_readable_video_is_a_clear_error_in_evaluation(synthetic, checkpoint, tmp_path, capsys):
    """Row: a list whose only entry is unreadable; evaluation names how many and the reader."""
    from sigma.data import resolve_reader
    garbage = os.path.join(synthetic["root"], "videos", "garbage_a.mp4")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text(f"{garbage} 0 0\n")
    (lists / "val.txt").write_text(open(synthetic["val"]).read().replace("videos/", synthetic["root"] + "/videos/"))
    (lists / "classes.json").write_text(open(synthetic["classes"]).read())
    assert _knn(checkpoint, lists, tmp_path / "eval") == 2
    line = _one_line_error(capsys.readouterr().err, "python -m sigma.evaluate knn: error: no readable video")
    assert f"1 of 1 file(s) could not be read with reader {resolve_reader('auto')!r}" in line and "garbage_a" in line


@pytest.mark.parametrize("temperature", ["0", "-1", "nan", "inf"])
def test_knn_temperature_must_be_positive(synthetic, checkpoint, tmp_path, capsys, temperature):
    """Row: `knn --temperature 0` or `-1` was accepted. Refused with the other settings, before any feature."""
    assert _knn(checkpoint, synthetic["root"], tmp_path, "--temperature", temperature) == 2
    line = _one_line_error(capsys.readouterr().err, "python -m sigma.evaluate knn: error: config key 'temperature' "
                                                    "must be a finite number > 0.0")
    assert line.endswith(f"got {float(temperature)!r}")


def test_knn_caps_k_at_the_training_clips_read_with_a_warning(synthetic, checkpoint, tmp_path):
    """Row: a k larger than the training set was silently used. One training clip is unreadable: the cap is
    the 6 clips read, not the 7 listed."""
    garbage = os.path.join(synthetic["root"], "videos", "garbage_a.mp4")
    lists = _lists(tmp_path / "lists", synthetic, train_extra=[f"{garbage} 0 0"])
    with pytest.warns(UserWarning, match="k=50 exceeds the 6 training clips; using k=6"):
        assert _knn(checkpoint, lists, tmp_path / "eval", "--k", "50") == 0
    r = _read(tmp_path / "eval" / "knn.json")
    assert r["k"] == 6 and r["k_requested"] == 50 and r["num_train"] == 6


@pytest.mark.parametrize("overrides", [[], ["optim.batch_size=1", "data.num_workers=1"]],
                         ids=["short-list", "from-a-worker"])
def test_pretraining_on_a_list_with_no_readable_video(synthetic, tmp_path, capsys, overrides):
    """Row: a list whose only entry is unreadable said 'lower optim.batch_size'; with batch 1 it ended in a
    DataLoader worker traceback. Both now say how many files were unreadable, with which reader, in one line."""
    from sigma.data import resolve_reader
    lst = tmp_path / "bad.txt"
    lst.write_text(f"{os.path.join(synthetic['root'], 'videos', 'garbage_b.mp4')} 0 0\n")
    rc = pretrain_main(["--data", str(lst), "--output-dir", str(tmp_path / "run"), *FAST, *overrides])
    assert rc == 2
    line = _one_line_error(capsys.readouterr().err, "python -m sigma.pretrain: error: no readable video")
    assert f"1 of 1 file(s) could not be read with reader {resolve_reader('auto')!r}" in line
    assert "batch_size" not in line and "garbage_b" in line


# --- the dataset's two modes ----------------------------------------------------------------------

def test_skip_mode_gives_none_and_collate_drops_it(synthetic, tmp_path):
    good = read_video_list(synthetic["val"])
    records = [good[0], good[0]._replace(path=str(tmp_path / "missing.mp4")), good[1]]
    skip = VideoDataset(records, num_frames=4, size=32, train=False, mask_ratio=None, unreadable="skip")
    nxt = VideoDataset(records, num_frames=4, size=32, train=False, mask_ratio=None)
    assert skip[1] is None and nxt[1]["index"] == 2  # "next" (pretraining) still replaces
    batch = collate_readable([skip[i] for i in range(3)])
    assert batch["index"].tolist() == [0, 2] and torch.equal(batch["video"][1], nxt[2]["video"])
    assert collate_readable([None, None]) is None
    assert skip.num_skipped == 1 and skip.skipped_files == [str(tmp_path / "missing.mp4")]
    with pytest.raises(ValueError, match=r"unreadable must be one of \('next', 'skip'\), got 'drop'"):
        VideoDataset(records, num_frames=4, size=32, unreadable="drop")


def test_no_readable_video_error_from_a_worker_keeps_one_line():
    """DataLoader re-raises a worker's exception as type(text of the worker's traceback)."""
    try:
        raise NoReadableVideoError("no readable video in 'x.txt': 1 of 1 file(s) could not be read")
    except NoReadableVideoError:
        from torch._utils import ExceptionWrapper
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(NoReadableVideoError) as info:
        wrapped.reraise()
    assert str(info.value) == "no readable video in 'x.txt': 1 of 1 file(s) could not be read"
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)


def test_finetune_test_skips_unreadable_clips(synthetic, checkpoint, tmp_path):
    """The fine-tuning task's multi-view test scores the clips it read, each once (`--epochs 0`: test only)."""
    garbage = os.path.join(synthetic["root"], "videos", "garbage_b.mp4")
    clean = _lists(tmp_path / "clean", synthetic)
    dirty = _lists(tmp_path / "dirty", synthetic, val_extra=[f"{garbage} 1 1"])
    for lists, out in ((clean, "e1"), (dirty, "e2")):
        assert evaluate_main(["finetune", "--checkpoint", checkpoint, "--data", str(lists), "--output-dir",
                              str(tmp_path / out), "--epochs", "0", "--test-views", "1", "1", "--device", "cpu",
                              "--no-progress"]) == 0
    want, got = _read(tmp_path / "e1" / "finetune.json"), _read(tmp_path / "e2" / "finetune.json")
    assert want["num_samples"] == got["num_samples"] == 2 and got["test_skipped_files"] == [garbage]
    assert got["top1"] == want["top1"] and got["top5"] == want["top5"]


def test_pretraining_list_too_short_counts_the_readable_videos(synthetic, tmp_path, capsys):
    garbage = os.path.join(synthetic["root"], "videos", "garbage_b.mp4")
    good = read_video_list(synthetic["train"])[0].path
    lst = tmp_path / "short.txt"
    lst.write_text(f"{garbage} 0 0\n{good} 0 0\n")
    rc = pretrain_main(["--data", str(lst), "--output-dir", str(tmp_path / "run"), *FAST, "optim.batch_size=4"])
    assert rc == 2
    line = _one_line_error(capsys.readouterr().err, "python -m sigma.pretrain: error:")
    assert "has 2 videos (1 readable), fewer than one optimizer step needs" in line and "= 4)" in line
