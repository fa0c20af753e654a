"""The settings of each evaluation task: one dataclass per task, the one source of its keys, types
and defaults for the Python function (`sigma.engine.config.defaults_from`) and for
`python -m sigma.evaluate TASK` (flags and dotted `key=value` overrides)."""
from dataclasses import dataclass
from typing import List, Optional

from sigma.engine.config import REQUIRED, device_problem, existing_path, folder_path, setting

AMP = ("auto", "bf16", "fp16", "none")
# NumPy takes seeds in [0, 2**32)
SEED = {"minimum": 0, "maximum": 2**32 - 1}
UNIT = {"minimum": 0.0, "maximum": 1.0}
POOLING = ("mean", "attentive")


def _resume_path(value):
    return None if value == "auto" else existing_path(value)



@dataclass
class RunConfig:
    checkpoint: str = setting(REQUIRED, help="encoder weights: a pretraining checkpoint (.pt), an exported "
                                             ".safetensors (or its folder), or a VideoMAE .pth", check=existing_path)
    data: str = setting(REQUIRED, help="what to evaluate on (see the task)", check=existing_path)
    output_dir: Optional[str] = setting(None, help="folder for the result JSON (and pictures/checkpoints)",
                                        check=folder_path)
    device: str = setting("auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...", check=device_problem)


@dataclass
class LabelledConfig(RunConfig):
    data: str = setting(REQUIRED, help="folder holding train.txt and val.txt (`path label [label ...]` per line), "
                                       "e.g. the synthetic set", check=existing_path)
    train_list: Optional[str] = setting(None, help="train list (default DATA/train.txt)", check=existing_path)
    val_list: Optional[str] = setting(None, help="val list (default DATA/val.txt)", check=existing_path)
    label_column: int = setting(0, minimum=0, help="which label of `path label [label ...]`")
    classes: Optional[str] = setting(None, help="classes.json (default: next to the train list, if any)",
                                     check=existing_path)
    sampling_rate: int = setting(4, minimum=1, help="frame stride of a clip (4 Kinetics, 2 SSv2)")
    num_workers: int = setting(0, minimum=0)
    amp: str = setting("auto", choices=AMP, help="autocast on CUDA")
    progress: bool = setting(True, help="progress bars")


@dataclass
class FrozenFeaturesConfig(LabelledConfig):
    """Probes on frozen pooled features (knn, linear)."""
    num_clips: int = setting(1, minimum=1, help="clips per video whose features are averaged")
    num_crops: int = setting(1, minimum=1, help="crops per clip whose features are averaged")
    batch_size: int = setting(8, minimum=1, help="clips per forward pass of the encoder")
    features_cache: Optional[str] = setting(
        None, help="folder where extracted features are kept and reused by later knn/linear runs on the same "
                   "checkpoint, list and clip settings (a label column or probe change reuses them)",
        check=folder_path)


@dataclass
class KnnConfig(FrozenFeaturesConfig):
    k: int = setting(20, minimum=1, help="neighbours")
    temperature: float = setting(0.07, above=0.0, help="votes weighted by exp(sim / temperature)")
    weighted: bool = setting(True, help="false: plain majority vote")


@dataclass
class LinearConfig(FrozenFeaturesConfig):
    pooling: str = setting("mean", choices=POOLING, help="mean: a linear layer on the mean of the tokens; attentive: "
                                                         "a learned query cross-attends over the frozen tokens, then "
                                                         "a linear layer (keeps where the object is)")
    heads: int = setting(4, minimum=1, help="attention heads of the attentive probe (must divide the width)")
    epochs: int = setting(100, minimum=0)
    lr: float = setting(1e-3, above=0.0)
    weight_decay: float = setting(1e-4, minimum=0.0)
    probe_batch_size: int = setting(256, minimum=1)
    seed: int = setting(0, **SEED)


@dataclass
class FinetuneConfig(LabelledConfig):
    output_dir: str = setting(REQUIRED, help="folder for finetune.json, finetune_metrics.csv and checkpoints/",
                              check=folder_path)
    epochs: int = setting(50, minimum=0, help="50 (SSv2) / 75 (K400) / 100 (SEVERE); 0 only tests")
    batch_size: int = setting(8, minimum=1, help="per process (even with mixup/cutmix)")
    base_lr: float = setting(1e-3, above=0.0, help="lr = base_lr * global batch / 256")
    min_lr: float = setting(1e-6, minimum=0.0)
    warmup_epochs: float = setting(5.0, minimum=0.0)
    weight_decay: float = setting(0.05, minimum=0.0)
    layer_decay: float = setting(0.75, above=0.0, maximum=1.0)
    betas: List[float] = setting([0.9, 0.999], length=2, minimum=0.0, below=1.0)
    drop_path: float = setting(0.1, minimum=0.0, below=1.0)
    label_smoothing: float = setting(0.1, minimum=0.0, below=1.0)
    mixup: float = setting(0.8, minimum=0.0, help="mixup alpha (0 with cutmix 0: no mixing)")
    cutmix: float = setting(1.0, minimum=0.0, help="cutmix alpha")
    mixup_prob: float = setting(1.0, **UNIT)
    mixup_switch_prob: float = setting(0.5, **UNIT)
    randaug: Optional[str] = setting("rand-m9-n2-mstd0.5-inc1", help="timm RandAugment string; 'none' disables")
    flip: bool = setting(True, help="horizontal flip (false for SSv2)")
    test_clips: int = setting(5, minimum=1)
    test_crops: int = setting(3, minimum=1)
    test_batch_size: Optional[int] = setting(None, minimum=1, help="default: batch_size")
    clip_grad: Optional[float] = setting(None, above=0.0)
    max_steps: Optional[int] = setting(None, minimum=1, help="stop after this many steps (smoke tests)")
    save_every: Optional[int] = setting(None, minimum=1, help="also checkpoint every N steps")
    log_every: int = setting(10, minimum=1)
    seed: int = setting(0, **SEED)
    label_fraction: float = setting(1.0, above=0.0, maximum=1.0,
                                    help="train on this class-stratified fraction of the train list (seeded by seed; "
                                         "at least one clip per class)")
    resume: Optional[str] = setting(None, help="'auto' (DIR/checkpoints/finetune-last.pt if present) or a path",
                                    check=_resume_path)
    overwrite: bool = setting(False, help="replace a fine-tuning run already in output_dir (its checkpoint, "
                                          "finetune_metrics.csv and finetune.json are removed)")


@dataclass
class SegmentConfig(RunConfig):
    data: str = setting(REQUIRED, help="DAVIS-layout folder: JPEGImages/<seq>/*.jpg and Annotations/<seq>/*.png",
                        check=existing_path)
    split: Optional[str] = setting(None, help="use ImageSets/2017/<split>.txt (default: every sequence)")
    sequences: Optional[List[str]] = setting(None, help="only these sequences: a name, comma-separated names "
                                                        "(a,b) or a YAML list ([a, b]); default: every sequence "
                                                        "(or the split's)")
    frame_stride: int = setting(1, minimum=1)
    max_clips: Optional[int] = setting(None, minimum=1, help="clips per sequence (default: all)")
    frame_mode: str = setting("resize", choices=("resize", "center_crop"))
    size: int = setting(28, minimum=1, help="side of the maps that are scored (paper: 28)")
    overclustering_k: int = setting(6, minimum=1)
    background: str = setting("class", choices=("class", "ignore"))
    reduction: str = setting("sequence", choices=("sequence", "clip", "pooled"))
    ignore_index: int = setting(255)
    seed: int = setting(0, **SEED)
    n_init: int = setting(10, minimum=1, help="k-means restarts")
    kmeans: str = setting("torch", choices=("torch", "sklearn"),
                          help="k-means implementation: torch (scikit-learn's algorithm and random draws, restarts "
                               "batched; fast) or sklearn (scikit-learn's KMeans itself, float64; slower)")
    l2_normalize: bool = setting(False, help="unit-normalise the features before k-means")
    amp: str = setting("auto", choices=AMP)
    progress: bool = setting(True, help="progress bars")


@dataclass
class VisualizeConfig(RunConfig):
    data: str = setting(REQUIRED, help="a video file (or a list/folder: its first max_videos videos)",
                        check=existing_path)
    output_dir: str = setting(REQUIRED, help="folder for visualize/ and visualize.json", check=folder_path)
    metrics: Optional[str] = setting(None, help="pretraining metrics.csv (default: the checkpoint run's)",
                                     check=existing_path)
    k: int = setting(6, minimum=1, help="k-means clusters of the cluster maps")
    seed: int = setting(0, **SEED)
    alpha: float = setting(0.5, help="overlay opacity", **UNIT)
    sampling_rate: int = setting(4, minimum=1)
    max_videos: int = setting(4, minimum=1)
    progress: bool = setting(True, help="progress bar over the videos")


TASKS = {"knn": KnnConfig, "linear": LinearConfig, "finetune": FinetuneConfig, "segment": SegmentConfig,
         "visualize": VisualizeConfig}
