"""Reading weights files safely (no pickle code execution): safetensors, or `torch.load(weights_only=True)`."""
from pathlib import Path

from sigma.engine.files import safe_torch_load


def load_state_file(path):
    """Tensors of a `.safetensors` file, or the object in a `.pth`/`.pt`/`.bin` file (read safely)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return safe_torch_load(path)
