"""Evaluation of pretrained video encoders: k-NN and linear probes, fine-tuning, unsupervised video
object segmentation, and pictures (cluster maps, prototype assignments, training curves).

Metric cores work on tensors (`sigma.evaluate.metrics`, `sigma.evaluate.segmentation`); the tasks
that read checkpoints and videos are `python -m sigma.evaluate {knn,linear,finetune,segment,visualize}`
and the functions of the same names here.
"""
import importlib

_LAZY = {
    "probe": ("knn", "linear"),
    "finetuning": ("finetune",),
    "segmentation": ("segment", "segment_clip"),
    "visualization": ("visualize", "plot_training_curves"),
    "metrics": ("classification_metrics", "knn_evaluate", "knn_scores", "train_linear_probe"),
    "augment": ("VideoMixup", "VideoRandAugment"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'sigma.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
