"""benchmarks/study.py --quick end to end: every objective pretrains, is measured and evaluated, and
the CSVs and the PNG come out with their columns, one row per run, and finite metrics."""
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


def test_quick_study_writes_csv_png_with_finite_metrics(tmp_path):
    study.main(["--quick", "--out", str(tmp_path), "--threads", "1"])
    columns, rows = _rows(tmp_path / "study_quick.csv")
    assert columns == study.FINAL_COLUMNS
    runs = sorted((r["objective"], r["seed"]) for r in rows)
    assert runs == sorted((o, "0") for o in (*study.OBJECTIVES, study.BASELINE))
    for r in rows:
        for m in (*study.METRICS, "segment_miou_overclustering", "encoder_std", "encoder_erank"):
            assert math.isfinite(float(r[m])), (r["objective"], m, r[m])
        for m in ("knn_object", "knn_motion", "linear_object", "linear_motion"):
            assert 0.0 <= float(r[m]) <= 100.0
        assert 0.0 <= float(r["segment_miou"]) <= 1.0
        trained = r["objective"] != study.BASELINE
        assert int(r["steps"]) == (2 if trained else 0)
        if trained:  # the pretraining's own measures reached the table
            for m in ("final_loss", "pred_std", "pred_erank", "target_std", "target_erank"):
                assert math.isfinite(float(r[m])), (r["objective"], m, r[m])
        # Only the Sinkhorn objective has prototypes to use.
        assert (r["usage_perplexity"] != "") == (r["objective"] == "sigma")

    columns, curves = _rows(tmp_path / "study_quick_curves.csv")
    assert columns == study.CURVE_COLUMNS
    for objective in study.OBJECTIVES:
        steps = sorted(int(c["step"]) for c in curves if c["objective"] == objective)
        assert steps[0] == 0 and steps[-1] == 2  # the initialisation and the last step
        logged = [c for c in curves if c["objective"] == objective and c["loss"] != ""]
        assert logged and all(math.isfinite(float(c["loss"])) for c in logged)
    sigma_rows = [c for c in curves if c["objective"] == "sigma" and c["loss_v"] != ""]
    assert sigma_rows and all(float(c["usage_perplexity_v"]) >= 1.0 for c in sigma_rows)

    png = tmp_path / "study_quick.png"
    assert png.stat().st_size > 10_000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # Rerunning reuses the finished runs (the resumable orchestration the full study relies on).
    first = {r["objective"]: r["train_seconds"] for r in rows}
    study.main(["--quick", "--out", str(tmp_path), "--threads", "1"])
    _, again = _rows(tmp_path / "study_quick.csv")
    assert {r["objective"]: r["train_seconds"] for r in again} == first


def test_only_rejects_a_malformed_run_name(tmp_path):
    with pytest.raises(SystemExit, match="OBJECTIVE:SEED"):
        study.main(["--quick", "--out", str(tmp_path), "--only", "sigma-0"])
