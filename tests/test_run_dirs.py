"""Rows of issue 21's table about output folders, the machine and messages, each as the user meets them:
the `python -m sigma.pretrain` / `python -m sigma.evaluate` command lines (their `main`, in process; one
subprocess for the prefix) on the synthetic set with a tiny model (4 frames at 32², 4 prototypes).

Runs never mix: a folder holding a run is refused unless resumed or overwritten, and --overwrite deletes
the old run's checkpoints so a later --resume auto cannot continue it. Values the machine decides (device,
paths) are refused before any data is read. A resume with a changed config names each changed key."""
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("av")

from sigma.engine.rundir import claim_output_dir  # noqa: E402
from sigma.evaluate.__main__ import main as evaluate_main  # noqa: E402
from sigma.pretrain import checkpoint as ck  # noqa: E402
from sigma.pretrain.cli import main as pretrain_main  # noqa: E402
from sigma.pretrain.config import ConfigError  # noqa: E402

PRETRAIN_ERROR = "python -m sigma.pretrain: error: "
TINY = dict(num_frames=4, img_size=32)
FAST = ["model.kwargs.depth=1", "model.kwargs.decoder_depth=1", "data.num_frames=4", "data.img_size=32",
        "data.mask_ratio=0.5", "data.num_workers=0", "optim.batch_size=2", "objective.num_prototypes=4",
        "projection.out_dim=16", "projection.kwargs.hidden_dims=[64,64]", "optim.epochs=1", "optim.warmup_epochs=0",
        "log.every=1", "log.stats_every=100", "log.tensorboard=false", "checkpoint.every=1", "checkpoint.keep=null"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from sigma.data import make_synthetic_dataset
    root = tmp_path_factory.mktemp("synthetic")
    out = make_synthetic_dataset(root, videos=6, seed=0, frames=8, size=64, object_size=(12, 24), davis=False)
    (root / "garbage.mp4").write_bytes(os.urandom(2000))
    (root / "garbage.txt").write_text(f"{root / 'garbage.mp4'} 0 0\n")
    return out


@pytest.fixture(scope="module")
def old_run(synthetic, tmp_path_factory):
    """A finished 2-step run: checkpoint-1.pt, checkpoint-2.pt, last.pt, metrics.csv, config.yaml."""
    out = tmp_path_factory.mktemp("old") / "run"
    assert pretrain_main(["--data", synthetic["train"], "--output-dir", str(out), *FAST, "optim.max_steps=2"]) == 0
    return out


@pytest.fixture
def run_copy(old_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(old_run, out)
    return out


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_line(err, prefix):
    """The one error line (log lines may precede it): the last of stderr, with no traceback."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(prefix), err
    return last


# --- runs are never mixed -------------------------------------------------------------------------

def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(synthetic, run_copy, capsys):
    """Row: the README command run again into an existing --output-dir overwrote metrics.csv and last.pt and
    kept the old checkpoint-120.pt, so a later --resume auto continued the old run. Now nothing is touched."""
    before = _snapshot(run_copy)
    assert pretrain_main(["--data", synthetic["train"], "--output-dir", str(run_copy), *FAST]) == 2
    line = _error_line(capsys.readouterr().err, PRETRAIN_ERROR + f"--output-dir {run_copy} already holds a "
                                                                 "pretraining run (checkpoints/checkpoint-1.pt")
    assert "pass --resume auto to continue it, or --overwrite to start afresh" in line
    assert "deletes metrics.csv, config.yaml, checkpoints/checkpoint-*.pt, checkpoints/last.pt" in line
    assert _snapshot(run_copy) == before
    assert pretrain_main(["--data", synthetic["train"], "--output-dir", str(run_copy), "--resume", "auto",
                          "--overwrite", *FAST]) == 2
    assert "--resume and --overwrite contradict" in _error_line(capsys.readouterr().err, PRETRAIN_ERROR)
    assert _snapshot(run_copy) == before


def test_overwrite_deletes_the_old_run_so_resume_auto_cannot_continue_it(synthetic, run_copy, capsys):
    (run_copy / "eval").mkdir()
    (run_copy / "eval" / "knn.json").write_text("{}")  # evaluation results are not the run's: kept
    (run_copy / "checkpoints" / ".checkpoint-3.pt.x1y2.tmp").write_bytes(b"")  # an interrupted write's leftover
    assert pretrain_main(["--data", synthetic["train"], "--output-dir", str(run_copy), "--overwrite", *FAST,
                          "optim.max_steps=1"]) == 0
    err = capsys.readouterr().err
    assert ("--overwrite: deleted the previous run's checkpoints/.checkpoint-3.pt.x1y2.tmp, "
            "checkpoints/checkpoint-1.pt, checkpoints/checkpoint-2.pt, checkpoints/last.pt, config.yaml, metrics.csv, "
            "provenance.json") in err
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["checkpoint-1.pt", "last.pt"]
    path, state = ck.find_resume_checkpoint(run_copy)  # what --resume auto would continue: the new run
    assert path.name == "checkpoint-1.pt" and state["config"]["optim"]["max_steps"] == 1
    assert (run_copy / "eval" / "knn.json").read_text() == "{}"
    assert [r.split(",")[0] for r in (run_copy / "metrics.csv").read_text().splitlines()] == ["step", "1"]


def test_the_guard_counts_only_the_runs_own_files(tmp_path):
    """An eval/ folder of result JSONs (several tasks write there) is no run; `what` is named."""
    for name in ("knn.json", "linear.json", "segment.json"):
        (tmp_path / name).write_text("{}")
    marks, files = ("metrics.csv", "checkpoints/checkpoint-*.pt"), ("metrics.csv", "checkpoints/checkpoint-*.pt")
    assert claim_output_dir(tmp_path, what="x", marks=marks, removes=files, resume=None, overwrite=False) == []
    assert claim_output_dir(tmp_path, what="x", marks=marks, removes=files, resume=None, overwrite=True) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["knn.json", "linear.json", "segment.json"]
    (tmp_path / "metrics.csv").write_text("step\n")
    with pytest.raises(ConfigError, match=r"already holds a x \(metrics\.csv\)"):
        claim_output_dir(tmp_path, what="x", marks=marks, removes=files, resume=None, overwrite=False)
    assert claim_output_dir(tmp_path, what="x", marks=marks, removes=files, resume="auto", overwrite=False) == []
    assert claim_output_dir(tmp_path, what="x", marks=marks, removes=files, resume=None, overwrite=True,
                            remove=False) == ["metrics.csv"]  # a rank other than 0 deletes nothing
    assert (tmp_path / "metrics.csv").exists()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from sigma.models import create_model, save_pretrained
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_pretrained(create_model("sigma_vit_tiny_patch16", **TINY), str(path))
    return str(path)


def test_finetune_refuses_a_folder_holding_a_finetuning_run_and_overwrite_replaces_it(synthetic, encoder, tmp_path,
                                                                                       capsys):
    out = tmp_path / "ft"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "finetune-last.pt").write_bytes(b"old run")
    (out / "finetune_metrics.csv").write_text("step,epoch,loss,lr\n9,0,1.0,0.1\n")
    (out / "knn.json").write_text("{}")
    argv = ["finetune", "--checkpoint", encoder, "--data", synthetic["root"], "--output-dir", str(out), "--epochs",
            "0", "--test-views", "1", "1", "--batch-size", "2", "--no-progress", "--device", "cpu"]
    assert evaluate_main(argv) == 2
    line = _error_line(capsys.readouterr().err, f"python -m sigma.evaluate finetune: error: --output-dir {out} "
                                                "already holds a fine-tuning run (checkpoints/finetune-last.pt, "
                                                "finetune_metrics.csv)")
    assert ("--overwrite to start afresh (deletes finetune_metrics.csv, finetune.json, "
            "checkpoints/finetune-last.pt)") in line
    assert (out / "checkpoints" / "finetune-last.pt").read_bytes() == b"old run"
    assert evaluate_main([*argv, "--overwrite"]) == 0
    assert "deleted the previous run's checkpoints/finetune-last.pt, finetune_metrics.csv" in capsys.readouterr().out
    assert (out / "checkpoints" / "finetune-last.pt").read_bytes() != b"old run"
    assert (out / "finetune.json").is_file() and (out / "knn.json").read_text() == "{}"


# --- the machine's values, before any data is read ------------------------------------------------

def test_pretrain_device_and_paths_are_checked_before_any_data(synthetic, tmp_path, capsys, monkeypatch):
    """Rows: device=cuda on a machine without CUDA and an --output-dir that is a file gave raw tracebacks.
    The list holds only an unreadable video: reading it would be a different error."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    garbage = str(Path(synthetic["root"]) / "garbage.txt")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [(["device=cuda"], "config key 'device': 'cuda' was asked for but no CUDA device is available here"),
             (["data.root=" + str(tmp_path / "nowhere")], "config key 'data.root': "),
             (["--output-dir", str(a_file / "run")], f"--output-dir {str(a_file)!r} is a file, not a folder"),
             (["--output-dir", str(a_file)], f"--output-dir {str(a_file)!r} is a file, not a folder")]
    for extra, words in cases:
        argv = ["--data", garbage, "--output-dir", str(tmp_path / "run"), *FAST, *extra]
        assert pretrain_main(argv) == 2, extra
        assert words in _error_line(capsys.readouterr().err, PRETRAIN_ERROR), extra
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("task,extra,words", [
    ("knn", ["--device", "cuda"], "config key 'device': 'cuda' was asked for but no CUDA device is available here"),
    ("knn", ["--device", "gpu"], "config key 'device': 'gpu' is not a device"),
    ("knn", ["--checkpoint", "missing.pt"], "config key 'checkpoint': 'missing.pt' does not exist"),
    ("linear", ["--train-list", "missing.txt"], "config key 'train_list': 'missing.txt' does not exist"),
    ("knn", ["--output-dir", "{file}"], "config key 'output_dir': '{file}' is a file, not a folder"),
    ("finetune", ["--resume", "missing.pt"], "config key 'resume': 'missing.pt' does not exist"),
    ("segment", ["--data", "missing"], "config key 'data': 'missing' does not exist"),
    ("visualize", ["--metrics", "missing.csv"], "config key 'metrics': 'missing.csv' does not exist"),
])
def test_evaluate_device_and_paths_are_checked_before_any_data(task, extra, words, synthetic, encoder, tmp_path,
                                                               capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    extra = [e.replace("{file}", str(a_file)) for e in extra]
    argv = [task, "--checkpoint", encoder, "--data", synthetic["root"], "--output-dir", str(tmp_path / "out"),
            "--device", "cpu", *extra]
    assert evaluate_main(argv) == 2
    assert words.replace("{file}", str(a_file)) in _error_line(capsys.readouterr().err,
                                                               f"python -m sigma.evaluate {task}: error: ")
    assert not (tmp_path / "out").exists()


# --- messages -------------------------------------------------------------------------------------

def test_resume_with_a_changed_config_names_each_changed_key(synthetic, run_copy, capsys):
    """Row: 'the checkpoint does not fit this config (Error(s) in loading state_dict for SinkhornSwapLoss:)',
    the differing keys cut off."""
    before = _snapshot(run_copy)
    argv = ["--data", synthetic["train"], "--output-dir", str(run_copy), "--resume", "auto", *FAST,
            "objective.num_prototypes=8", "optim.max_steps=3"]
    assert pretrain_main(argv) == 2
    newest = run_copy / "checkpoints" / "checkpoint-2.pt"
    line = _error_line(capsys.readouterr().err,
                       PRETRAIN_ERROR + f"--resume {newest}: the checkpoint does not fit this config: ")
    assert "objective.num_prototypes was 4, now 8" in line and "optim.max_steps was 2, now 3" in line
    assert _snapshot(run_copy) == before


def test_finetune_resume_into_another_encoder_names_what_differs(synthetic, encoder, tmp_path, capsys):
    """A fine-tuning checkpoint of a 1-block encoder resumed on the 4-block one: the changed settings, one line."""
    from sigma.models import create_model, save_pretrained
    small = tmp_path / "small"
    save_pretrained(create_model("sigma_vit_tiny_patch16", depth=1, **TINY), str(small))
    common = ["--data", synthetic["root"], "--epochs", "0", "--test-views", "1", "1", "--batch-size", "2",
              "--no-progress", "--device", "cpu"]
    assert evaluate_main(["finetune", "--checkpoint", str(small), "--output-dir", str(tmp_path / "a"), *common]) == 0
    old = tmp_path / "a" / "checkpoints" / "finetune-last.pt"
    assert evaluate_main(["finetune", "--checkpoint", encoder, "--output-dir", str(tmp_path / "b"), "--resume",
                          str(old), *common]) == 2
    line = _error_line(capsys.readouterr().err, f"python -m sigma.evaluate finetune: error: resume: {old} does "
                                                "not fit this model (")
    assert f"checkpoint was {str(small)!r}, now {encoder!r}" in line and "with the settings it was written" in line


def test_errors_start_with_the_command_typed(monkeypatch, capsys, tmp_path):
    """`sigma-pretrain` when run as the installed entry point (sys.argv[0]); `python -m sigma.pretrain` otherwise
    (tests/test_config.py runs that one as a process)."""
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "bin" / "sigma-pretrain")])
    assert pretrain_main(["--print-config", "seed=-1"]) == 2
    assert capsys.readouterr().err == ("sigma-pretrain: error: config key 'seed' must be an integer in "
                                       "[0, 4294967295], got -1\n")
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "sigma" / "pretrain" / "__main__.py")])
    assert pretrain_main(["--print-config", "optim.base_lr=.inf"]) == 2
    want = PRETRAIN_ERROR + "config key 'optim.base_lr' must be a finite number > 0.0, got inf\n"
    assert capsys.readouterr().err == want
    with pytest.raises(SystemExit):  # argparse's own errors name the same command
        pretrain_main(["--data", "x"])
    assert capsys.readouterr().err.splitlines()[-1].startswith(PRETRAIN_ERROR + "--data and --output-dir")
