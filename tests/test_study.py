"""benchmarks/study.py --data digits --quick end to end: every objective pretrains, is measured and
evaluated by every lens, the untrained encoders and the from-scratch fine-tuning come out beside
them, the CSVs and the PNG have their columns, and a second call redoes nothing."""
import csv
import math
import os
import sys

import pytest

pytest.importorskip("timm")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
pytest.importorskip("PIL")
if pytest.importorskip("importlib.util").find_spec("decord") is None:
    pytest.importorskip("av")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import study  # noqa: E402


def _rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_quick_digits_study_writes_every_lens_and_resumes(tmp_path):
    study.main(["--data", "digits", "--quick", "--out", str(tmp_path), "--threads", "1"])
    stem = tmp_path / "study_digits_quick"
    columns, rows = _rows(f"{stem}.csv")
    assert columns == study.FINAL_COLUMNS
    assert sorted((r["objective"], r["seed"]) for r in rows) == sorted(
        [(o, "0") for o in study.OBJECTIVES] + [(study.BASELINE, "0")])
    for r in rows:
        for m in (*study.METRICS, "segment_miou_overclustering", "encoder_std", "encoder_erank"):
            assert math.isfinite(float(r[m])), (r["objective"], m, r[m])
        for m in study.PROBES:
            assert 0.0 <= float(r[m]) <= 100.0
        assert 0.0 <= float(r["segment_miou"]) <= 1.0
        trained = r["objective"] != study.BASELINE
        assert int(r["steps"]) == (2 if trained else 0)
        if trained:  # the pretraining's own measures and speed reached the table
            for m in ("final_loss", "pred_std", "pred_erank", "target_std", "target_erank", "clips_per_s"):
                assert math.isfinite(float(r[m])), (r["objective"], m, r[m])
        # Only the Sinkhorn objectives have prototypes to use.
        assert (r["usage_perplexity"] != "") == r["objective"].startswith("sigma")

    _, ft = _rows(f"{stem}_finetune.csv")
    runs = sorted((f["objective"], float(f["label_fraction"])) for f in ft)
    assert runs == sorted((o, x) for o in (*study.OBJECTIVES, study.SCRATCH) for x in (0.5, 1.0))
    for f in ft:  # 12 train clips over 10 digits: half keeps at least one clip per class present
        assert int(f["num_train"]) < 12 if f["label_fraction"] == "0.5" else int(f["num_train"]) == 12
        assert int(f["steps"]) == 1 and 0.0 <= float(f["top1"]) <= 100.0

    _, summary = _rows(f"{stem}_summary.csv")
    knn = {r["objective"]: r for r in summary if r["metric"] == "knn_object"}
    assert set(knn) == {*study.OBJECTIVES, study.BASELINE}
    for r in knn.values():  # one seed each: the mean is that seed's value, the margin is over the untrained one
        assert float(r["mean"]) == pytest.approx(float(r["best_untrained"]) + float(r["margin_over_best"]), abs=1e-3)
    _, paired = _rows(f"{stem}_paired.csv")
    assert {(p["a"], p["b"]) for p in paired if p["metric"] == "finetune_0.5"} >= {("sigma_hard", study.SCRATCH)}

    columns, curves = _rows(f"{stem}_curves.csv")
    assert columns == study.CURVE_COLUMNS
    for objective in study.OBJECTIVES:
        steps = sorted(int(c["step"]) for c in curves if c["objective"] == objective)
        assert steps[0] == 0 and steps[-1] == 2  # the initialisation and the last step
    base = (tmp_path / "study_digits_quick_pixel_baseline.json").read_text()
    assert '"zeros"' in base and '"best_constant"' in base
    with open(f"{stem}.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # Rerunning reuses every finished run and evaluation (the resumable orchestration the study relies on).
    first = {r["objective"]: (r["train_seconds"], r["eval_seconds"]) for r in rows}
    study.main(["--data", "digits", "--quick", "--out", str(tmp_path), "--threads", "1"])
    _, again = _rows(f"{stem}.csv")
    assert {r["objective"]: (r["train_seconds"], r["eval_seconds"]) for r in again} == first


def test_only_rejects_a_malformed_run_name(tmp_path):
    with pytest.raises(SystemExit, match="OBJECTIVE:SEED"):
        study.main(["--quick", "--out", str(tmp_path), "--only", "sigma-0"])
