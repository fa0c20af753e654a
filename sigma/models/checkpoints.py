"""Reading and writing weights safely (no pickle code execution)."""
from pathlib import Path

from sigma.engine.files import SAFE_GLOBALS, atomic_write, safe_torch_load  # noqa: F401 - re-exported


def load_state_file(path):
    """Tensors of a `.safetensors` file, or the object in a `.pth`/`.pt`/`.bin` file (read safely)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return safe_torch_load(path)


def atomic_save(obj_writer, path):
    """Write a file via `obj_writer(tmp_path)` atomically (`sigma.engine.files.atomic_write`)."""
    return atomic_write(path, obj_writer)
