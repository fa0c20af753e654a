"""The benchmark scripts' own logic: the research-style baseline computes what the method says, the
benchmarks' float64 truth is right, the POT adapter solves the same problem, and the CSV has its
columns. "Right" is judged against the independent float64 NumPy truth of tests/truth.py, never
against our own backends."""
import csv
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from truth import sinkhorn_log_f64  # noqa: E402

import sigma_kernels  # noqa: E402
from benchmarks import _cli as cli  # noqa: E402
from benchmarks import _report as report  # noqa: E402
from benchmarks import _truth as truth64  # noqa: E402
from benchmarks import loss as loss_bench  # noqa: E402
from benchmarks import sinkhorn as sinkhorn_bench  # noqa: E402
from benchmarks.research_style import research_loss, research_sinkhorn  # noqa: E402


def _truth_q(s, eps, n_iters):
    """The float64 plan of tests/truth.py as a torch tensor."""
    return torch.from_numpy(sinkhorn_log_f64(s.double().numpy(), eps, n_iters)[0])


def _scores(m, k, d=19, seed=0):
    z, c = sinkhorn_bench.make_problem(m, k, d, "cpu", seed=seed)
    return z, c, z @ c.T


@pytest.mark.parametrize("m,k", [(37, 29), (1, 5), (16, 1), (29, 37)])
@pytest.mark.parametrize("n_iters", [1, 3, 10])
def test_research_sinkhorn_matches_reference(m, k, n_iters):
    _, _, s = _scores(m, k)
    q = research_sinkhorn(s, 0.2, n_iters)
    expected = _truth_q(s, 0.2, n_iters).float()
    assert q.shape == (m, k)
    torch.testing.assert_close(q, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(m), rtol=1e-5, atol=1e-5)


def test_research_sinkhorn_overflows_where_the_spec_says():
    # exp(S/ε) with S = 1 and 1/ε = 100 > 88.7 is inf in float32: the baseline's known failure.
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    assert not torch.isfinite(research_sinkhorn(s, 0.01, 3)).all()
    assert torch.isfinite(sigma_kernels.sinkhorn(s, 0.01, 3, backend="reference")).all()


def test_float64_truth_matches_the_independent_truth():
    _, _, s = _scores(53, 17)
    s64 = s.double()
    u, v = truth64.float64_sinkhorn(lambda i0, i1: s64[i0:i1], 53, 17, 0.05, 7, chunk=10)  # several blocks
    _, u_t, v_t = sinkhorn_log_f64(s64.numpy(), 0.05, 7)
    torch.testing.assert_close(u, torch.from_numpy(u_t), rtol=0, atol=1e-10)
    torch.testing.assert_close(v, torch.from_numpy(v_t), rtol=0, atol=1e-10)


@pytest.mark.parametrize("eps", [0.05, 0.01, 0.003])  # exp-domain fast path, its edge, log-domain fallback
def test_stored_float64_truth_matches_the_log_domain_one(eps):
    _, _, s = _scores(61, 23)
    s64 = s.double()
    u, v = truth64.float64_sinkhorn_stored(s64, eps, 8)
    u_ref, v_ref = truth64.float64_sinkhorn(lambda i0, i1: s64[i0:i1], 61, 23, eps, 8, chunk=16)
    scale = 1.0 / eps  # potentials are of order 1/ε: compare relative to it
    torch.testing.assert_close(u / scale, u_ref / scale, rtol=0, atol=1e-12)
    torch.testing.assert_close(v / scale, v_ref / scale, rtol=0, atol=1e-12)
    # scores far from 0 do not overflow the exp-domain path (only differences of S matter)
    u2, v2 = truth64.float64_sinkhorn_stored(s64 + 50.0, eps, 8)
    torch.testing.assert_close(u2 / scale, u_ref / scale, rtol=0, atol=1e-12)
    torch.testing.assert_close(v2 / scale, (v_ref - 50.0 / eps) / scale, rtol=0, atol=1e-12)


def test_q_error_of_exact_potentials_is_zero_and_of_a_perturbed_q_is_seen():
    z, c, _ = _scores(41, 13)
    rows, u, v = sinkhorn_bench.float64_truth(z, c, 0.1, 5)
    assert sinkhorn_bench.q_error(("uv", u, v), rows, 41, u, v, 0.1, chunk=8) == 0.0
    q = torch.exp(rows(0, 41) / 0.1 + u[:, None] + v[None, :] + math.log(41))
    q[40, 12] += 1e-3
    assert sinkhorn_bench.q_error(("Q", q), rows, 41, u, v, 0.1, chunk=8) == pytest.approx(1e-3, rel=1e-6)
    q[3, 2] = float("nan")
    assert math.isnan(sinkhorn_bench.q_error(("Q", q), rows, 41, u, v, 0.1, chunk=8))


@pytest.mark.parametrize("n_iters", [4, 400])  # same iteration count, and at convergence
def test_pot_adapter_matches_our_sinkhorn(n_iters):
    pytest.importorskip("ot")
    z, c, s = _scores(45, 11, d=7)
    fn, finish, output, _ = sinkhorn_bench.make_provider("pot-sinkhorn_log", z, c, s, 0.1, n_iters)
    kind, q = finish(fn())
    assert kind == "Q" and output == "Q"
    torch.testing.assert_close(q, _truth_q(s, 0.1, n_iters).float(), rtol=1e-4, atol=1e-6)
    if n_iters > 100:  # converged: both marginals hold
        torch.testing.assert_close(q.sum(0), torch.full((11,), 45 / 11), rtol=1e-4, atol=1e-4)


def test_flash_sinkhorn_potential_conversion():
    # flash-sinkhorn's alternating solver in GeomLoss convention, written out in float64 for the
    # half cost 1 − z·c (prototypes = sources, updated first): its potentials, converted, must give our Q.
    z, c, s = _scores(31, 9)
    s64, eps, m, k = s.double(), 0.1, 31, 9
    cost = 1.0 - s64.T  # (K, M)
    f, g = torch.zeros(k, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
    for _ in range(6):
        f = -eps * torch.logsumexp((g[None, :] - cost) / eps - math.log(m), dim=1)
        g = -eps * torch.logsumexp((f[:, None] - cost) / eps - math.log(k), dim=0)
    u, v = sinkhorn_bench.flash_potentials_to_uv(f, g, eps)
    q = torch.exp(s64 / eps + u[:, None] + v[None, :] + math.log(m))
    torch.testing.assert_close(q, _truth_q(s64, eps, 6), rtol=1e-9, atol=1e-12)


def _plain_loss(z_v, z_p, c, eps, n_iters, tau, targets):
    """The loss written out with the float64 truth's Sinkhorn (tests/truth.py) for the targets."""
    s_v = F.normalize(z_v, dim=1) @ c.detach().T
    s_p = F.normalize(z_p, dim=1) @ c.T
    q_v = _truth_q(s_v.detach(), eps, n_iters).to(s_v.dtype)
    q_p = _truth_q(s_p.detach(), eps, n_iters).to(s_p.dtype)
    if targets == "hard":
        q_v, q_p = q_v.argmax(1), q_p.argmax(1)
    return F.cross_entropy(s_v / tau, q_p) + F.cross_entropy(s_p / tau, q_v)


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_research_loss_and_ops_loss_match_a_plain_computation(targets):
    z_v, z_p, c = loss_bench.make_problem(37, 29, 19, "cpu", torch.float32, seed=1)
    inputs = (z_v, z_p, c)
    expected = _plain_loss(*inputs, 0.2, 5, 0.1, targets)
    g_expected = torch.autograd.grad(expected, inputs)
    candidates = {
        "research": research_loss(*inputs, 0.2, 5, 0.1, targets),
        "ops": loss_bench.ops_loss(*inputs, 0.2, 5, 0.1, targets, "reference"),
    }
    if targets == "hard":
        candidates["ops-assign"] = loss_bench.ops_assign_loss(*inputs, 0.2, 5, 0.1, "reference")
    for name, value in candidates.items():
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=name)
        for g, ge in zip(torch.autograd.grad(value, inputs), g_expected):
            torch.testing.assert_close(g, ge, rtol=1e-4, atol=1e-6, msg=name)
    # _plain_loss detaches C in the video term, so dC above checks the gradient routing too;
    # the benchmark's float64 truth agrees as well
    loss64, g64 = loss_bench.float64_loss_and_grads(*inputs, 0.2, 5, 0.1, targets)
    torch.testing.assert_close(loss64.float(), expected, rtol=1e-5, atol=1e-6)
    for g, ge in zip(g64, g_expected):
        torch.testing.assert_close(g.float(), ge, rtol=1e-4, atol=1e-6)


def _read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_sinkhorn_benchmark_writes_the_promised_csv_and_png(tmp_path, capsys):
    path = sinkhorn_bench.main(["--sizes", "64x7x8@0.2", "--repeats", "1", "--iters", "3", "--device", "cpu",
                                "--providers", "research-eager,reference*,pot*,cpu", "--out", str(tmp_path)])
    header, rows = _read_csv(path)
    assert tuple(header) == report.CSV_COLUMNS
    for col in ("machine", "device", "torch", "triton", "commit", "date", "provider", "size", "eps", "iters",
                "dtype", "median_ms", "peak_mem_mb", "mem_method", "max_err", "speedup"):
        assert col in header
    ok = {r["provider"]: r for r in rows if r["status"] == "ok"}
    assert {"research-eager", "reference", "reference-streaming", "pot-sinkhorn_log"} <= set(ok)
    assert "cpu" in {r["provider"] for r in rows}  # run or skipped with a reason, never silently dropped
    for r in ok.values():
        assert float(r["median_ms"]) > 0 and r["benchmark"] == "sinkhorn"
        assert r["eps"] == "0.2" and r["iters"] == "3" and r["M"] == "64" and r["K"] == "7"
        assert float(r["max_err"]) < 1e-4, r["provider"]  # every provider solves the same problem
        assert float(r["speedup"]) > 0 and r["mem_method"]
        # the floor is the same for every provider and below any measured time
        assert r["floor_ms"] == ok["research-eager"]["floor_ms"] and 0 < float(r["floor_frac"]) < 1
        assert float(r["read_gbps"]) > 0 and float(r["gemm_gflops"]) > 0
    assert float(ok["research-eager"]["speedup"]) == 1.0
    assert os.path.exists(path[:-4] + ".png")
    out = capsys.readouterr().out
    assert "research-eager" in out and "speed-up" in out


def test_loss_benchmark_writes_the_promised_csv(tmp_path):
    path = loss_bench.main(["--sizes", "40x11x8@0.2", "--repeats", "1", "--iters", "3", "--device", "cpu",
                            "--providers", "research-eager,reference,reference-assign", "--out", str(tmp_path),
                            "--no-plot"])
    header, rows = _read_csv(path)
    assert tuple(header) == report.CSV_COLUMNS
    ok = [r for r in rows if r["status"] == "ok"]
    assert {(r["provider"], r["targets"]) for r in ok} == {
        ("research-eager", "hard"), ("research-eager", "soft"), ("reference", "hard"), ("reference", "soft"),
        ("reference-assign", "hard")}
    for r in ok:
        assert r["benchmark"] == "loss" and float(r["median_ms"]) > 0 and float(r["speedup"]) > 0
        assert float(r["max_err"]) < 1e-4 and float(r["grad_err"]) < 1e-4


def test_size_and_provider_selection():
    sizes = cli.parse_sizes("quick,100x20x8,64x7x3@0.5", sinkhorn_bench.PRESETS)
    assert sizes[0] == ("quick",) + sinkhorn_bench.PRESETS["quick"]
    assert sizes[1] == ("100x20x8", 100, 20, 8, None) and sizes[2][-1] == 0.5
    with pytest.raises(SystemExit, match="MxKxD"):
        cli.parse_sizes("big", sinkhorn_bench.PRESETS)
    assert cli.select(sinkhorn_bench.PROVIDERS, "*-streaming") == [
        "reference-streaming", "cpu-streaming", "triton-streaming"]


def test_make_table_writes_between_the_markers_or_prints(tmp_path, capsys):
    from benchmarks import make_table
    results = tmp_path / "results"
    sinkhorn_bench.main(["--sizes", "30x5x4@0.3", "--repeats", "1", "--iters", "2", "--device", "cpu",
                         "--providers", "research-eager,pot*,flash*", "--out", str(results), "--no-plot"])
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{make_table.START}\nold table\n{make_table.END}\nafter\n")
    make_table.main(["--results", str(results), "--readme", str(readme)])
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore\n")
    assert text.endswith(f"{make_table.END}\nafter\n")
    body = text[text.index(make_table.START):text.index(make_table.END)]
    assert "`research-eager`" in body and "`pot-sinkhorn_log`" in body and "30×5×4" in body
    assert "host `" in body and "commit `" in body  # says which machine and code it came from
    assert "`flash-sinkhorn` (skipped" in body
    readme.write_text("# no markers\n")
    capsys.readouterr()
    make_table.main(["--results", str(results), "--readme", str(readme)])
    assert readme.read_text() == "# no markers\n"
    assert "`research-eager`" in capsys.readouterr().out


def test_gpu_check_script_is_valid_bash_and_refuses_to_run_without_a_gpu(tmp_path):
    import subprocess
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu_check.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would run for real")
    env = {k: v for k, v in os.environ.items() if k != "GPU_CHECK_ALLOW_CPU"}
    done = subprocess.run(["bash", script, str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no CUDA device" in (tmp_path / "summary.txt").read_text()


# --- smoke tests: every script under benchmarks/ runs at a tiny size, writing into tmp_path -------

class _MatrixTransfers:
    """Counts, op by op, the reads and writes of (M, K)-sized tensors and the matrix products that
    reach the kernels (views excluded): an independent count of what the eager code moves."""

    VIEWS = {"t", "transpose", "view", "expand", "alias", "detach", "_unsafe_view", "as_strided", "permute",
             "unsqueeze", "squeeze", "select", "slice", "lift_fresh"}

    def __init__(self, numel):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                name = func._schema.name.split("::")[1]
                if name not in _MatrixTransfers.VIEWS:
                    leaves = torch.utils._pytree.tree_leaves((args, kwargs, out))
                    counter.passes += sum(isinstance(t, torch.Tensor) and t.numel() == numel for t in leaves)
                    counter.gemms += name == "mm"
                return out

        self.passes = self.gemms = 0
        self.mode = Mode()


@pytest.mark.parametrize("n_iters", [1, 3])
@pytest.mark.parametrize("what", ["sinkhorn", "hard", "soft"])
def test_gpu_model_counts_what_the_eager_code_moves(what, n_iters):
    from benchmarks import gpu_model
    m, k, d = 37, 29, 19
    counter = _MatrixTransfers(m * k)
    if what == "sinkhorn":
        s = torch.randn(m, k)
        with counter.mode:
            research_sinkhorn(s, 0.5, n_iters)
        phases = gpu_model.sinkhorn_eager(m, k, d, n_iters)
    else:
        z_v, z_p, c = loss_bench.make_problem(m, k, d, "cpu", torch.float32, seed=2)
        with counter.mode:
            research_loss(z_v, z_p, c, 0.5, n_iters, 0.1, what).backward()
        phases = gpu_model.loss_eager(m, k, d, n_iters, targets=what)
    assert counter.passes == sum(p["passes"] for p in phases)
    assert counter.gemms == sum(p["gemms"] for p in phases)


def test_gpu_model_floors_scale_and_its_table_and_occupancy_print(capsys):
    from benchmarks import gpu_model
    rows = gpu_model.main(["--sizes", "4096x3000x256", "--iters", "10", "--occupancy"])
    out = capsys.readouterr().out
    assert "loss fwd+bwd, soft" in out and "occupancy on sm_90" in out and "fused_row_step_kernel" in out
    assert all(f > 0 for r in rows for f in r["floors"]) and len(rows) == 15
    for r in rows:
        h100, h200 = r["floors"]
        assert h200 <= h100 + 1e-12  # the same compute, more bandwidth
        if r["path"] == "stored" and r["what"].startswith("Sinkhorn"):  # bandwidth-bound: the bandwidths' ratio
            assert h100 / h200 == pytest.approx(4.8 / 3.35)
    for bench, path in gpu_model.PATHS:  # every path is linear in M (no M² term)
        one = gpu_model.predict_ms(bench, path, 20_000, 3000, 256, 10, "H100 SXM")
        assert gpu_model.predict_ms(bench, path, 40_000, 3000, 256, 10, "H100 SXM") == pytest.approx(2 * one)
    # Hopper: 65,536 registers per SM, allocated per warp in units of 256; 64 warps per SM.
    full = {"registers": 255, "num_warps": 8, "shared_bytes": 98304}
    assert gpu_model.occupancy(full) == (1, 8 / 64)  # 255·32 -> 8192 per warp, 8 warps: all registers
    assert gpu_model.occupancy({"registers": 32, "num_warps": 4, "shared_bytes": 0}) == (16, 1.0)
    assert gpu_model.occupancy({"registers": 64, "num_warps": 4, "shared_bytes": 100_000}) == (2, 8 / 64)
    assert gpu_model.auto_streams(45056, 3000) and not gpu_model.auto_streams(8192, 3000)


def test_gpu_model_compares_measured_rows_with_predictions(tmp_path):
    from benchmarks import gpu_model
    fields = ["benchmark", "device", "provider", "M", "K", "D", "iters", "targets", "median_ms", "status"]
    rows = [["sinkhorn", "NVIDIA H100 80GB HBM3", "triton", 45056, 3000, 256, 10, "", 4.2, "ok"],
            ["loss", "NVIDIA H200", "SinkhornSwapLoss-stored", 45056, 3000, 256, 10, "soft", 30.0, "ok"],
            ["loss", "NVIDIA H100 80GB HBM3", "research-compile", 45056, 3000, 256, 10, "hard", 80.0, "ok"],
            ["sinkhorn", "NVIDIA A100-SXM4-80GB", "triton", 45056, 3000, 256, 10, "", 9.0, "ok"],
            ["sinkhorn", "NVIDIA H100 80GB HBM3", "cuda", 45056, 3000, 256, 10, "", "", "skipped: no"]]
    with open(tmp_path / "run-sinkhorn.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(rows)
    lines = gpu_model.main(["--compare", str(tmp_path)])
    assert len(lines) == 5  # header + the four ok rows
    floor = gpu_model.predict_ms("sinkhorn", "stored", 45056, 3000, 256, 10, "H100 SXM")
    assert f"{floor:.2f}" in lines[1] and f"{4.2 / floor:.2f}x" in lines[1] and "H100 SXM" in lines[1]
    assert "stored, H200" in lines[2]
    assert "no model for this provider" in lines[3] and "no peaks for 'NVIDIA A100-SXM4-80GB'" in lines[4]
    with pytest.raises(SystemExit, match="--compare"):
        gpu_model.main(["--compare", str(tmp_path / "missing")])


def test_pretrain_step_benchmark_compares_sigma_and_pixel_steps(tmp_path):
    from benchmarks import pretrain_step
    path = pretrain_step.main(["--cases", "tiny", "--repeats", "1", "--out", str(tmp_path),
                               "--set", "data.num_frames=2", "--set", "data.img_size=32"])
    assert os.path.dirname(path) == str(tmp_path) and path.endswith("-pretrain_step.csv")
    header, rows = _read_csv(path)
    assert tuple(header) == pretrain_step.COLUMNS
    for objective in ("sigma", "pixel"):
        mine = {r["stage"]: r for r in rows if r["objective"] == objective}
        assert set(mine) == {*pretrain_step.STAGES, "sum of stages", "whole step"}
        stages = [mine[s] for s in pretrain_step.STAGES]
        assert all(float(r["median_ms"]) >= 0 for r in stages) and float(mine["whole step"]["median_ms"]) > 0
        assert sum(float(r["share"]) for r in stages) == pytest.approx(1.0, abs=1e-4)
        assert mine["model"]["tokens"] == "4" and mine["model"]["masked_tokens"] == "3"  # 1×2×2 tubes, 75% masked
    sigma = {r["stage"]: r for r in rows if r["objective"] == "sigma"}
    pixel = {r["stage"]: r for r in rows if r["objective"] == "pixel"}
    assert sigma["model"]["K"] == "32" and sigma["model"]["D"] == "64" and pixel["model"]["K"] == ""
    assert pixel["model"]["D"] == str(2 * 16 * 16 * 3)  # the pixel target: a 2×16×16 RGB tube
    assert float(pixel["whole step"]["vs_pixel"]) == 1.0
    assert float(sigma["whole step"]["vs_pixel"]) == pytest.approx(
        float(sigma["whole step"]["median_ms"]) / float(pixel["whole step"]["median_ms"]), rel=1e-3)
    with pytest.raises(SystemExit, match="--cases"):
        pretrain_step.main(["--cases", "vit_h", "--out", str(tmp_path)])


def test_loss_scaling_sweeps_in_fresh_processes(tmp_path):
    from benchmarks import loss_scaling
    path = loss_scaling.main(["--ms", "24", "--k", "5", "--d", "4", "--epsilon", "0.3", "--repeats", "1",
                              "--providers", "research-eager,SinkhornSwapLoss", "--device", "cpu",
                              "--out", str(tmp_path)])
    header, rows = _read_csv(path)
    assert tuple(header) == report.CSV_COLUMNS and os.path.dirname(path) == str(tmp_path)
    assert [(r["provider"], r["status"], r["M"]) for r in rows] == [
        ("research-eager", "ok", "24"), ("SinkhornSwapLoss", "ok", "24")]
    assert float(rows[0]["speedup"]) == 1.0 and float(rows[1]["speedup"]) > 0
    assert all(float(r["max_err"]) < 1e-4 for r in rows)  # both checked against the float64 truth


def test_data_loader_benchmark_times_the_loader(tmp_path):
    pytest.importorskip("PIL")
    from benchmarks import data_loader
    data_loader.main(["--videos", "2", "--sizes", "4x32", "--workers", "0", "--batch-size", "1", "--clips", "2",
                      "--out", str(tmp_path)])
    (path,) = tmp_path.glob("*-data_loader.csv")
    header, rows = _read_csv(path)
    assert tuple(header) == data_loader.COLUMNS
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows
    assert rows[0]["frames"] == "4" and rows[0]["size"] == "32" and float(rows[0]["clips_per_s"]) > 0


def test_roofline_and_env_report_print_what_they_measured(capsys):
    from benchmarks import env_report, roofline
    rates = roofline.main(["--mib", "8", "--repeats", "1"])
    assert rates["read_gbps"] > 0 and rates["gemm_gflops"] > 0
    env_report.main()
    out = capsys.readouterr().out
    assert "GB/s" in out and "torch" in out and "backend reference" in out
