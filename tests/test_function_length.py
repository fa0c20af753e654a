"""No function in `sigma/` is longer than 80 lines: long pipelines are set-up + step loop + small
helpers (docs/development.md)."""
import ast
from pathlib import Path

LIMIT = 80
SIGMA = Path(__file__).resolve().parents[1] / "sigma"


def function_lengths(root=SIGMA):
    """[(lines, "path:line name")] of every function and method under `root`, longest first
    (lines from the `def` to the last line of the body, decorators excluded)."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                where = f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"
                out.append((node.end_lineno - node.lineno + 1, where))
    return sorted(out, reverse=True)


def test_scan_measures_a_known_function(tmp_path):
    source = "def f():\n    x = 1\n\n    return x\n\n\nclass C:\n    def g(self):\n        pass\n"
    (tmp_path / "m.py").write_text(source)
    assert function_lengths(tmp_path) == [(4, f"{tmp_path.name}/m.py:1 f"), (2, f"{tmp_path.name}/m.py:8 g")]


def test_no_function_in_sigma_is_longer_than_80_lines():
    lengths = function_lengths()
    assert len(lengths) > 100  # the scan found the package
    too_long = [f"{where} ({n} lines)" for n, where in lengths if n > LIMIT]
    assert not too_long, "split these functions: " + ", ".join(too_long)


if __name__ == "__main__":
    for n, where in function_lengths()[:5]:
        print(n, where)
