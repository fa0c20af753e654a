"""What the README promises to users of other codebases: the loss side in VideoMAE's environment
(an old timm, or none), and the HF snippet as the README prints it."""
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_LOSS_SIDE = """
import sys
import torch
import sigma_kernels
from sigma.losses import SinkhornSwapLoss
import sigma.models.projections as projections
from sigma.models.projections import TubeProjectionMLP
from sigma.models.tubes import tube_pixels
import sigma.models
video = torch.randn(1, 3, 2, 16, 16)
assert TubeProjectionMLP()(tube_pixels(video)).shape == (1, 1, 256)
assert projections.create_projection("mlp", out_dim=4)(video, torch.ones(1, 1, dtype=torch.bool)).shape == (1, 1, 4)
try:
    sigma.models.load_encoder
except ImportError as exc:
    assert "timm>=0.9" in str(exc), exc
else:
    raise AssertionError("load_encoder under an unusable timm should raise ImportError")
assert "timm" not in sys.modules, sorted(m for m in sys.modules if m.startswith("timm"))
print("ok")
"""


def _run(code, env_path):
    env = {"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def test_projections_module_path_imports_with_timm_blocked():
    block = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "timm" or name.startswith("timm."):
                    raise ImportError("timm blocked for this test")
        sys.meta_path.insert(0, Block())
    """)
    out = _run(block + _LOSS_SIDE, str(ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_an_old_timm_is_never_imported(tmp_path):
    # VideoMAE's environment pins timm 0.4.12: a stand-in that fails loudly if anything imports it
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "__init__.py").write_text("raise RuntimeError('the old timm was imported')\n")
    info = tmp_path / "timm-0.4.12.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: timm\nVersion: 0.4.12\n")
    out = _run(_LOSS_SIDE, f"{tmp_path}:{ROOT}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def _readme_block(marker):
    """The ```python block of README.md that contains `marker`."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{len(found)} README python blocks contain {marker!r}"
    return found[0]


@pytest.mark.slow  # imports transformers and trains 20 steps: about 10 s on a quiet 2-core CPU
def test_readme_hf_snippet_runs_as_written():
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    code = _readme_block("hf_masked_predictions(")
    namespace = {}
    exec(compile(code, "README.md (HF snippet)", "exec"), namespace)
    losses = namespace["losses"]
    assert len(losses) >= 10
    assert all(loss == loss for loss in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
