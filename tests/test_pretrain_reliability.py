"""Issue 21 items 1, 2, 4 at the command line: non-finite training states never reach a checkpoint,
damaged checkpoints are found and skipped, SIGINT/SIGTERM stop with a checkpoint and resume bitwise.
Tiny config (tests/test_pretrain_cli.py's FAST), a handful of steps per run."""
import errno
import math
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("av")

from test_pretrain_cli import FAST, _assert_same_tensors, _rows, _torchrun  # noqa: E402

from sigma.engine import files  # noqa: E402
from sigma.engine.checkpoints import parameter_fingerprint, state_fingerprint  # noqa: E402
from sigma.pretrain import checkpoint as ck  # noqa: E402
from sigma.pretrain import trainer  # noqa: E402
from sigma.pretrain.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")

# In-process, the command line names itself as a module run (sys.argv[0] is pytest's).
WARN = "python -m sigma.pretrain: warning:"


@pytest.fixture(autouse=True)
def _one_thread_no_callbacks(one_thread):
    """A test's fault-injection callbacks must not reach the next test."""
    yield
    trainer.STEP_CALLBACKS.clear()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 training videos: 4 steps per epoch at batch 2."""
    from sigma.data.synthetic import make_synthetic_dataset
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(out, videos=10, seed=0, frames=16, size=64, object_size=(12, 24), davis=False)
    return str(out / "train.txt")


@pytest.fixture(scope="module")
def four_steps(data, tmp_path_factory):
    """A finished 4-step run with checkpoint-2.pt and checkpoint-4.pt (= last.pt)."""
    out = tmp_path_factory.mktemp("four") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as in every test here (module fixtures run before the autouse one)
    assert main(["--data", data, "--output-dir", str(out), *FAST, "optim.max_steps=4"]) == 0
    torch.set_num_threads(n)
    return out


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _cli(data, out, *extra, resume=None):
    args = ["--data", data, "--output-dir", str(out), *FAST, *extra]
    return main(args + (["--resume", str(resume)] if resume else []))


def _one_line_error(err, *needles):
    """stderr's pretraining message is one line, without a traceback, holding every needle."""
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith("python -m sigma.pretrain:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _poison_clips_after(monkeypatch, n_clips):
    """Every clip the dataset makes after the first `n_clips` holds a NaN pixel."""
    from sigma.data import VideoDataset

    class Poisoned(VideoDataset):
        made = 0

        def __getitem__(self, key):
            sample = super().__getitem__(key)
            Poisoned.made += 1
            if Poisoned.made > n_clips:
                sample["video"][0, 0, 0, 0] = NAN
            return sample
    factories = trainer._factories
    monkeypatch.setattr(trainer, "_factories", lambda: (*factories()[:2], Poisoned))


# --- item 1: non-finite policy ----------------------------------------------------------------------

def test_nan_clip_on_a_stats_step_stops_with_the_loss_message(data, tmp_path, monkeypatch, capsys):
    """Row: NaN in an input clip on a step that logs collapse stats -> was a LinAlgError traceback."""
    _poison_clips_after(monkeypatch, 2)  # step 2 (batch 2) logs collapse stats (log.stats_every=2)
    assert _cli(data, tmp_path / "run", "optim.max_steps=4") == 1
    _one_line_error(capsys.readouterr().err, "stopped: the loss is nan at step 2")
    assert [r["step"] for r in _rows(tmp_path / "run")] == ["1"]


def test_collapse_stats_of_non_finite_features_are_nan():
    from sigma.diagnostics import feature_collapse_stats
    x = torch.randn(12, 6, dtype=torch.float64)
    clean = feature_collapse_stats(x)
    s = torch.linalg.svdvals((x - x.mean(0)).double())
    p = s / s.sum()
    assert float(clean["erank"]) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5)
    for bad in (NAN, float("inf"), -float("inf")):
        y = x.clone().float()
        y[3, 2] = bad
        stats = feature_collapse_stats(y)
        assert math.isnan(stats["erank"]) and math.isnan(stats["std"])


def test_nan_state_is_never_checkpointed_and_auto_resume_skips_nan_files(data, tmp_path, monkeypatch, capsys):
    """Row: NaN in a clip when checkpoint.every is not a multiple of log.every -> checkpoint-6.pt was
    written with NaN weights and `--resume auto` resumed from it."""
    out = tmp_path / "run"
    every = ["log.every=4", "checkpoint.every=3", "optim.max_steps=8"]
    _poison_clips_after(monkeypatch, 8)  # step 5's clips: NaN loss and weights, no log row until step 8
    assert _cli(data, out, *every) == 1
    line = _one_line_error(capsys.readouterr().err, "non-finite training state at step 6", "NaN or inf",
                           "checkpoint-6.pt not written", "checkpoint-3.pt (step 3)")
    assert "model." in line  # the first non-finite tensor is named
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-3.pt", "last.pt"]
    monkeypatch.undo()
    # a checkpoint with NaN weights (as an older sigma wrote them) is skipped by --resume auto
    state = ck.load_checkpoint(out / "checkpoints" / "checkpoint-3.pt")
    state["step"] = 6
    next(iter(state["model"].values())).view(-1)[0] = NAN
    files.atomic_torch_save(state, out / "checkpoints" / "checkpoint-6.pt")
    capsys.readouterr()
    assert _cli(data, out, *every, "optim.max_steps=4", resume="auto") == 0
    warned = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert len(warned) == 1 and re.fullmatch(re.escape(WARN) + r" --resume auto: skipping \S+checkpoint-6.pt "
                                             r"\(step 6\): model\.\S+ holds NaN or inf; trying an older checkpoint",
                                             warned[0]), warned
    assert ck.load_checkpoint(out / "checkpoints" / "checkpoint-4.pt")["provenance"]["resumed_from"].endswith(
        "checkpoint-3.pt")
    # and refused when named
    assert _cli(data, tmp_path / "other", resume=out / "checkpoints" / "checkpoint-6.pt") == 2
    _one_line_error(capsys.readouterr().err, "checkpoint-6.pt", "holds NaN or inf (step 6)")


def test_a_step_the_fp16_scaler_skips_is_not_a_non_finite_state():
    """An inf gradient under a GradScaler: the scaler skips the step, weights and moments stay
    finite, and the pre-checkpoint check passes (what runs under amp=fp16 on CUDA; the scaler's
    logic is the same on the CPU)."""
    from types import SimpleNamespace

    from sigma.engine.distributed import DistInfo
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    before = parameter_fingerprint(net)
    scaler.scale(net(torch.full((2, 4), 1e38)).sum() * 1e10).backward()  # inf gradients
    scaler.step(opt)
    scaler.update()
    assert parameter_fingerprint(net) == before and scaler.get_scale() < 65536.0
    module = SimpleNamespace(model=net, projection=torch.nn.Identity(), objective="pixel")
    run = SimpleNamespace(module=module, optimizer=opt, pending={"loss_sum": torch.tensor(3.0)}, interrupt=None,
                          info=DistInfo(0, 0, 1, torch.device("cpu")), step=1, out=Path("unused"))
    assert trainer.check_finite(run) is False
    with torch.no_grad():
        net.weight[1, 2] = NAN
    with pytest.raises(FloatingPointError, match=r"step 1: model\.weight holds NaN or inf.*no checkpoint was written"):
        trainer.check_finite(run)


# --- item 2: checkpoint integrity -------------------------------------------------------------------

@pytest.mark.parametrize("stride", [5, pytest.param(1, marks=pytest.mark.slow, id="every-byte")])
def test_every_changed_byte_of_a_checkpoint_is_detected(tmp_path, stride):
    """A flipped bit anywhere: every byte of the zip directory and checksum record (the last 200),
    every `stride`-th byte before them."""
    path = files.atomic_torch_save({"format": "x", "w": torch.arange(40.0), "meta": {"a": [1, 2]}}, tmp_path / "c.pt")
    assert files.verify_checksum(path) is True
    raw = path.read_bytes()
    assert torch.load(path, weights_only=True)["w"].equal(torch.arange(40.0))  # plain torch.load reads it
    for i in sorted(set(range(0, len(raw), stride)) | set(range(len(raw) - 200, len(raw)))):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(ValueError):
            files.safe_torch_load(path)
    for cut in (0, 1, len(raw) // 2, len(raw) - 1):
        path.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=f"{path}"):
            files.safe_torch_load(path)


def test_flipped_bytes_are_refused_and_auto_resume_falls_back(data, four_steps, tmp_path, capsys):
    """Row: 64 bytes flipped inside a checkpoint -> was loaded silently."""
    out = _copy(four_steps, tmp_path)
    newest = out / "checkpoints" / "checkpoint-4.pt"
    raw = bytearray(newest.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])
    newest.unlink()  # last.pt is a hard link to it: damage one file, keep last.pt intact
    newest.write_bytes(bytes(raw))
    assert _cli(data, tmp_path / "other", resume=newest) == 2
    _one_line_error(capsys.readouterr().err, f"--resume {newest}", "is corrupt", "SHA-256")
    (out / "checkpoints" / "last.pt").unlink()
    # a temporary file a killed writer left behind is removed at start-up
    stale = out / "checkpoints" / ".checkpoint-6.pt.k2j4_x.tmp"
    stale.write_bytes(b"")
    assert _cli(data, out, "optim.max_steps=4", resume="auto") == 0
    err = capsys.readouterr().err
    assert f"{WARN} --resume auto: skipping checkpoint-4.pt: {newest} is corrupt: its bytes do not " \
           "match the SHA-256 recorded when it was written; trying an older checkpoint\n" in err
    assert f"removed {stale}" in err and not stale.exists()
    resumed = ck.load_checkpoint(out / "checkpoints" / "checkpoint-4.pt")
    assert resumed["provenance"]["resumed_from"].endswith("checkpoint-2.pt")
    _assert_same_tensors(resumed["model"], ck.load_checkpoint(four_steps / "checkpoints" / "checkpoint-4.pt")["model"])


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_empty_or_truncated_resume_file_is_one_line(data, four_steps, tmp_path, capsys, damage):
    """Row: 0-byte file passed to --resume -> was an IndexError traceback."""
    bad = tmp_path / "bad.pt"
    raw = (four_steps / "checkpoints" / "checkpoint-2.pt").read_bytes()
    bad.write_bytes(b"" if damage == "empty" else raw[: len(raw) // 3])
    assert _cli(data, tmp_path / "run", resume=bad) == 2
    _one_line_error(capsys.readouterr().err, f"--resume {bad}",
                    "is empty (0 bytes)" if damage == "empty" else "truncated, damaged or not a torch file")


def test_checkpoint_without_checksum_loads_with_a_warning(data, four_steps, tmp_path, capsys):
    state = ck.load_checkpoint(four_steps / "checkpoints" / "checkpoint-2.pt")
    old = tmp_path / "older-sigma.pt"
    torch.save(state, old)  # as sigma wrote checkpoints before they carried a checksum
    assert _cli(data, tmp_path / "run", "optim.max_steps=3", resume=old) == 0
    said = [x for x in capsys.readouterr().err.splitlines() if "checksum" in x]
    assert said == [f"{WARN} {old} has no checksum (written by an older sigma or another program): "
                    "loaded without an integrity check"]


def test_disk_full_while_writing_a_checkpoint(data, tmp_path, monkeypatch, capsys):
    """Row: disk full while writing a checkpoint -> was torch's "[enforce fail ...] unexpected pos"."""
    real = ck.atomic_torch_save

    def full_disk_at_step_4(state, path):
        if Path(path).name != "checkpoint-4.pt":
            return real(state, path)

        def write(tmp):
            Path(tmp).write_bytes(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return files.atomic_write(path, write)
    monkeypatch.setattr(ck, "atomic_torch_save", full_disk_at_step_4)
    out = tmp_path / "run"
    assert _cli(data, out, "optim.max_steps=4") == 1
    ckdir = out / "checkpoints"
    _one_line_error(capsys.readouterr().err, f"no space left on device while writing {ckdir / 'checkpoint-4.pt'}; "
                    "the previous checkpoint, step 2 (checkpoint-2.pt), is intact")
    assert sorted(p.name for p in ckdir.iterdir()) == ["checkpoint-2.pt", "last.pt"]  # no temporary file left
    assert ck.load_checkpoint(ckdir / "last.pt")["step"] == 2


# --- item 4: graceful interruption -----------------------------------------------------------------

def _signal_at(step, signum):
    def send(at, info):
        if at == step:
            signal.raise_signal(signum)
    trainer.STEP_CALLBACKS.append(send)


def test_sigterm_checkpoints_and_resume_is_bitwise(data, tmp_path, capsys):
    """Row: SIGTERM from a scheduler -> was a traceback, losing everything since the last checkpoint.
    Interrupted at step 3 (between log rows and checkpoints), resumed, == never interrupted."""
    every = ["log.every=2", "checkpoint.every=4", "optim.max_steps=6"]
    part, full = tmp_path / "part", tmp_path / "full"
    _signal_at(3, signal.SIGTERM)
    assert _cli(data, part, *every) == 128 + signal.SIGTERM == 143
    _one_line_error(capsys.readouterr().err, "stopped by SIGTERM after step 3 of 6",
                    f"checkpoint written to {part / 'checkpoints' / 'checkpoint-3.pt'}", "--resume auto")
    assert ck.load_checkpoint(part / "checkpoints" / "last.pt")["step"] == 3
    trainer.STEP_CALLBACKS.clear()
    assert _cli(data, part, *every, resume="auto") == 0
    assert _cli(data, full, *every) == 0
    a, b = ck.load_checkpoint(full / "checkpoints" / "last.pt"), ck.load_checkpoint(part / "checkpoints" / "last.pt")
    assert a["rank_fingerprints"] == b["rank_fingerprints"]
    for key in ("model", "projection", "loss", "optimizer", "scaler", "step"):
        _assert_same_tensors(a[key], b[key], key)
    assert [(r["step"], r["loss"]) for r in _rows(full)] == [(r["step"], r["loss"]) for r in _rows(part)]
    assert [r["step"] for r in _rows(part)] == ["2", "4", "6"]


def test_ctrl_c_before_the_first_checkpoint_keeps_the_work(data, tmp_path, capsys):
    """Row: Ctrl-C (SIGINT) before the first checkpoint -> was a KeyboardInterrupt traceback."""
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under `cmd &` in a script
    _signal_at(1, signal.SIGINT)
    assert _cli(data, out, "checkpoint.every=100", "optim.max_steps=5") == 130
    _one_line_error(capsys.readouterr().err, "stopped by SIGINT after step 1 of 5")
    assert ck.load_checkpoint(out / "checkpoints" / "checkpoint-1.pt")["step"] == 1
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are given back


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(data, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "pretrain_launcher.py"), "--signal-at", "2:0:INT:2",
                        "--data", data, "--output-dir", str(out), *FAST, "checkpoint.every=1", "optim.max_steps=5"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr[-2000:]
    assert "second SIGINT: exiting now, without a checkpoint" in r.stderr and "Traceback" not in r.stderr
    assert ck.load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 1  # step 2's was never written


def test_sigterm_to_every_process_with_workers_still_checkpoints(data, tmp_path):
    """A scheduler that signals each process it tracks (Slurm's step daemon, a cgroup-wide kill)
    sends SIGTERM to the main process and to its DataLoader workers one by one. The workers keep
    serving until the main process has written its checkpoint; resuming == never interrupted."""
    import os
    opts = ["data.num_workers=1", "log.every=2", "checkpoint.every=100", "optim.max_steps=5"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    part, full = tmp_path / "part", tmp_path / "full"
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "pretrain_launcher.py"), "--term-all-at", "3",
                        "--data", data, "--output-dir", str(part), *FAST, *opts],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 143, r.stderr[-3000:]
    assert "stopped by SIGTERM after step 3 of 5" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert ck.load_checkpoint(part / "checkpoints" / "last.pt")["step"] == 3
    assert _cli(data, part, *opts, resume="auto") == 0
    assert _cli(data, full, *opts) == 0
    a, b = ck.load_checkpoint(full / "checkpoints" / "last.pt"), ck.load_checkpoint(part / "checkpoints" / "last.pt")
    for key in ("model", "projection", "loss", "optimizer", "step"):
        _assert_same_tensors(a[key], b[key], key)
    assert [(r["step"], r["loss"]) for r in _rows(full)] == [(r["step"], r["loss"]) for r in _rows(part)]


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_sigterm_on_one_rank_stops_both_and_resumes_bitwise(data, tmp_path):
    """SIGTERM reaches rank 1 only, after step 3: both ranks agree to stop at the next log step (4),
    write checkpoint-4.pt, exit 143 without hanging; a torchrun --resume auto == never interrupted."""
    args = ["--data", data, *FAST, "log.every=2", "checkpoint.every=100", "optim.max_steps=6"]
    part, full = tmp_path / "part", tmp_path / "full"
    r = _torchrun(["--nproc_per_node", "2", str(ROOT / "tests" / "pretrain_launcher.py"), "--signal-at", "3:1:TERM",
                   "--output-dir", str(part), *args], timeout=300)
    assert r.returncode != 0 and "stopped by SIGTERM after step 4 of 6" in r.stderr, r.stderr[-3000:]
    assert "exitcode  : 143" in r.stderr, r.stderr[-3000:]
    assert ck.load_checkpoint(part / "checkpoints" / "last.pt")["step"] == 4
    r = _torchrun(["--nproc_per_node", "2", "-m", "sigma.pretrain", "--output-dir", str(part), "--resume", "auto",
                   *args], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _torchrun(["--nproc_per_node", "2", "-m", "sigma.pretrain", "--output-dir", str(full), *args], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = ck.load_checkpoint(full / "checkpoints" / "last.pt"), ck.load_checkpoint(part / "checkpoints" / "last.pt")
    assert a["rank_fingerprints"] == b["rank_fingerprints"] and len(set(a["rank_fingerprints"])) == 1
    trained = {**{f"model.{k}": v for k, v in b["model"].items()},
               **{f"projection.{k}": v for k, v in b["projection"].items()},
               **{f"criterion.{k}": v for k, v in b["loss"].items()}}
    assert b["rank_fingerprints"][0] == state_fingerprint(trained)
    assert [(r["step"], r["loss"]) for r in _rows(full)] == [(r["step"], r["loss"]) for r in _rows(part)]


@pytest.mark.slow
def test_kill_9_loop_resumes_bitwise_with_every_step_logged_once(data, tmp_path):
    """What held before issue 21 and must keep holding: SIGKILL at arbitrary moments (some during
    checkpoint writes, checkpoint.every=1), `--resume auto` each time, ends bitwise where an
    uninterrupted run ends, every step logged once; leftover temporary files are cleaned up."""
    import os
    import random
    import time
    every = [*FAST, "checkpoint.every=1", "checkpoint.keep=2", "log.every=2", "optim.max_steps=10"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "sigma.pretrain", "--data", data, "--resume", "auto", *every]
    part, full = tmp_path / "part", tmp_path / "full"
    rng = random.Random(0)
    for _ in range(6):
        proc = subprocess.Popen([*cmd, "--output-dir", str(part)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4.0, 9.0))  # start-up (imports) takes a few seconds here
        proc.kill()
        proc.wait()
    assert ck.newest_checkpoint(part) is not None  # the kills landed while it trained
    r = subprocess.run([*cmd, "--output-dir", str(part)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert subprocess.run([*cmd, "--output-dir", str(full)], cwd=ROOT, env=env, capture_output=True,
                          timeout=600).returncode == 0
    a, b = ck.load_checkpoint(full / "checkpoints" / "last.pt"), ck.load_checkpoint(part / "checkpoints" / "last.pt")
    for key in ("model", "projection", "loss", "optimizer", "step"):
        _assert_same_tensors(a[key], b[key], key)
    assert [(r["step"], r["loss"]) for r in _rows(full)] == [(r["step"], r["loss"]) for r in _rows(part)]
    assert not [p for p in (part / "checkpoints").iterdir() if p.name.endswith(".tmp")]
