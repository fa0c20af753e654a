"""SIGMA's models: a VideoMAE-layout video ViT on timm's blocks, projections, checkpoints, interop.

Tubes and the MLP/pixel projections are pure PyTorch (`sigma.models.tubes`,
`sigma.models.projections`) and import without timm; the ViT models need timm>=0.9 (extra
`models`). When timm is importable, importing `sigma.models` registers the named configs in timm's
registry (`timm.create_model("sigma_vit_small_patch16")`). Everything is also reachable as
`sigma.models.<name>`, loaded on first use. See docs/models.md.
"""
import importlib
import importlib.metadata
import re

_LAZY = {
    "tubes": ("IMAGENET_MEAN", "IMAGENET_STD", "check_mask", "gather_tokens", "normalize_tubes", "patchify_tubes",
              "tube_grid", "tube_pixels", "unnormalize_video"),
    "projections": ("DINOProjection", "MLPProjection", "PixelProjection", "TubeProjectionMLP", "create_projection",
                    "read_dino_state_dict"),
    "checkpoints": ("safe_torch_load",),
    "vit": ("CONFIGS", "QVBiasAttention", "TubeEmbedding", "VideoClassifier", "VideoMAEDecoder",
            "VideoMAEPretrainModel", "VideoViTConfig", "VideoViTEncoder", "create_classifier", "create_encoder",
            "create_model", "get_config", "sincos_position_table"),
    "interop": ("load_classifier", "load_encoder", "load_model", "load_pretrained", "load_state_strict",
                "save_pretrained", "to_videomae_state_dict"),
    "hf": ("from_transformers", "hf_masked_predictions", "set_hf_head", "to_transformers"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}
__all__ = sorted(_WHERE)


def _timm_version_error():
    """Why the timm installed here cannot serve the ViT models (None if it can), found without
    importing it: an old timm (VideoMAE's code pins 0.4.x) is never imported by `sigma.models`, so
    the tubes and projections stay importable in VideoMAE's environment."""
    try:
        version = importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return ImportError("timm is not installed")
    major_minor = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if major_minor < (0, 9):
        return ImportError(f"timm {version} is installed; timm>=0.9 is needed (timm.layers)")
    return None


_timm_error = _timm_version_error()
if _timm_error is None:
    try:  # register the named configs with timm now, so timm.create_model(name) works after `import sigma.models`
        importlib.import_module(".vit", __name__)
    except ImportError as exc:  # timm blocked or broken; tubes/projections still work
        _timm_error = exc


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'sigma.models' has no attribute {name!r}")
    if module in ("vit", "interop", "hf") and _timm_error is not None:
        raise ImportError(f"sigma.models.{name} needs timm>=0.9 (pip install 'sigma-video[models]'); importing it "
                          f"failed with: {_timm_error}") from _timm_error
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
