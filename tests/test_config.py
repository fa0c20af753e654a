"""The one config system (sigma.engine.config) under both CLIs: every key of the pretraining schema
and of each evaluation task rejects a misspelt key ("did you mean") and a value of the wrong type
with one named line and exit status 2; --print-config output loads back to the same config; the
evaluation functions and the CLI share their defaults."""
import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
import yaml

from sigma.engine.config import schema_leaves, unwrap_optional
from sigma.evaluate.__main__ import main as evaluate_main
from sigma.evaluate.config import TASKS
from sigma.pretrain.cli import main as pretrain_main
from sigma.pretrain.config import ConfigError, PretrainConfig, available_configs, load_config

ROOT = Path(__file__).resolve().parents[1]
# Errors start with the command typed: `main` called in a test process (argv[0] pytest) is `python -m sigma.pretrain`.
PRETRAIN_ERROR = "python -m sigma.pretrain: error: "

# Every pretraining key and its default, as users' configs and checkpoints rely on them: none may be lost or
# change silently.
PRETRAIN_DEFAULTS = {
    "seed": 0, "device": "auto", "amp": "auto", "model.name": "sigma_vit_base_patch16", "model.kwargs": {},
    "data.root": None, "data.num_frames": 16, "data.sampling_rate": 4, "data.img_size": 224, "data.patch_size": 16,
    "data.tubelet_size": 2, "data.mask_ratio": 0.9, "data.scales": [1.0, 0.875, 0.75, 0.66], "data.flip": True,
    "data.reader": "auto", "data.num_workers": 8, "data.pin_memory": True, "projection.kind": "mlp",
    "projection.out_dim": 256, "projection.kwargs": {}, "objective.name": "sigma", "objective.num_prototypes": 3000,
    "objective.epsilon": 0.05, "objective.sinkhorn_iterations": 10, "objective.temperature": 0.1,
    "objective.targets": "hard", "objective.backend": "auto", "optim.epochs": 800, "optim.batch_size": 16,
    "optim.accum_steps": 1, "optim.base_lr": 1.5e-4, "optim.min_lr": 1e-5, "optim.warmup_lr": 0.0,
    "optim.warmup_epochs": 40, "optim.weight_decay": 0.05, "optim.betas": [0.9, 0.95], "optim.clip_grad": None,
    "optim.max_steps": None, "log.every": 20, "log.stats_every": 100, "log.tensorboard": True,
    "checkpoint.every": 1000, "checkpoint.keep": 3,
}
PRETRAIN_KEYS = [key for key, _, _ in schema_leaves(PretrainConfig)]
EVALUATE_KEYS = [(task, key) for task, schema in TASKS.items() for key, _, _ in schema_leaves(schema)]


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _typo(key):
    """A misspelling of the last part of a dotted key: its last letter doubled."""
    return key + key[-1]


def _wrong_value(tp, meta):
    """(a value of the wrong type for `tp`, words the error must contain)."""
    inner, _ = unwrap_optional(tp)
    if meta.get("choices"):
        return "[1, 2]", "one of " + ", ".join(meta["choices"])
    origin = typing.get_origin(inner)
    if inner is bool:
        return "maybe", "true or false"
    if inner is int:
        return "2.5", "integer"
    if inner is float:
        return "fast", "number"
    if inner is str:
        return "[1, 2]", "string"
    if origin is list:
        return "fast", "list"
    if origin is dict:
        return "fast", "mapping"
    raise AssertionError(f"no wrong value for {tp}")


def _one_named_line(capsys, prefix, *words):
    cap = capsys.readouterr()
    err = cap.err
    assert err.count("\n") == 1 and err.startswith(prefix), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    return err


def test_the_schema_keeps_every_key_and_default():
    assert sorted(PRETRAIN_KEYS) == sorted(PRETRAIN_DEFAULTS)
    cfg = load_config("default")
    for key, value in PRETRAIN_DEFAULTS.items():
        got = _get(cfg, key)
        assert got == value and isinstance(got, bool) == isinstance(value, bool), key


@pytest.mark.parametrize("key", PRETRAIN_KEYS)
def test_pretrain_misspelt_key_is_named_with_a_hint(key, capsys):
    assert pretrain_main(["--print-config", f"{_typo(key)}=1"]) == 2
    _one_named_line(capsys, PRETRAIN_ERROR, f"unknown config key {_typo(key)!r}", f"did you mean {key!r}")


@pytest.mark.parametrize("key,tp,meta", schema_leaves(PretrainConfig))
def test_pretrain_wrong_type_is_named(key, tp, meta, capsys):
    value, words = _wrong_value(tp, meta)
    assert pretrain_main(["--print-config", f"{key}={value}"]) == 2
    _one_named_line(capsys, PRETRAIN_ERROR, f"config key {key!r}", "must be", words)


# The range of each pretraining key, with a value on each side (issue 21's rows: mask_ratio=0.0, seed=-1 and
# base_lr=.inf gave tracebacks or NaN later; every float key also refuses .inf and .nan, below).
RANGES = [
    ("device", "gpu", "cpu"), ("amp", "fp8", "bf16"), ("data.num_frames", 0, 4), ("data.sampling_rate", 0, 1),
    ("data.img_size", 0, 32), ("data.patch_size", 0, 8), ("data.tubelet_size", 0, 1), ("data.mask_ratio", 1.0, 0.5),
    ("data.mask_ratio", 0.0, 0.99), ("data.mask_ratio", -0.1, 0.5), ("data.num_workers", -1, 0),
    ("data.scales", "[1.0, 0.0]", "[1.0, 0.5]"), ("data.scales", "[1.5]", "[1.0]"), ("seed", -1, 0),
    ("seed", 2**32, 2**32 - 1), ("projection.kind", "linear", "dino"),
    ("projection.out_dim", 0, 1), ("objective.name", "mse", "l2"), ("objective.num_prototypes", 0, 1),
    ("objective.sinkhorn_iterations", 0, 1), ("objective.epsilon", 1e-4, 1e-3), ("objective.temperature", 0, 1e-6),
    ("objective.targets", "argmax", "soft"), ("optim.epochs", 0, 1), ("optim.batch_size", 0, 1),
    ("optim.accum_steps", 0, 1), ("optim.max_steps", 0, "null"), ("optim.base_lr", -1e-4, 1e-4),
    ("optim.base_lr", 0, 1e-9), ("optim.base_lr", ".inf", 1e-4), ("optim.min_lr", -1, 0), ("optim.warmup_lr", -1, 0),
    ("optim.weight_decay", -0.1, 0), ("optim.warmup_epochs", -1, 0.5), ("optim.clip_grad", -1, "null"),
    ("optim.clip_grad", 0, 1.0), ("optim.betas", "[0.9]", "[0.8, 0.9]"), ("optim.betas", "[0.9, 1.0]", "[0, 0.99]"),
    ("log.every", 0, 1), ("log.stats_every", 0, 1), ("checkpoint.every", 0, 1), ("checkpoint.keep", 0, "null"),
]


@pytest.mark.parametrize("key,bad,good", RANGES)
def test_pretrain_ranges_are_named(key, bad, good, capsys):
    with pytest.raises(ConfigError, match=f"config key '{key}' must be"):
        load_config("tiny", [f"{key}={bad}"])
    load_config("tiny", [f"{key}={good}"])
    assert pretrain_main(["--print-config", f"{key}={bad}"]) == 2
    _one_named_line(capsys, PRETRAIN_ERROR, repr(key))


# Keys that must fit each other (checked when the config is composed, before anything runs).
RELATIONS = [
    (["data.mask_ratio=0.01"], "'data.mask_ratio' masks 0 of the 16 tubes"),  # tiny: (64 / 16)^2 tubes per slice
    (["data.img_size=72"], "'data.img_size' must be a multiple of data.patch_size=16, got 72"),
    (["data.num_frames=5"], "'data.num_frames' must be a multiple of data.tubelet_size=2, got 5"),
]


@pytest.mark.parametrize("overrides,words", RELATIONS)
def test_pretrain_keys_that_must_fit_each_other(overrides, words, capsys):
    with pytest.raises(ConfigError, match=words):
        load_config("tiny", overrides)
    assert pretrain_main(["--print-config", *overrides]) == 2
    _one_named_line(capsys, PRETRAIN_ERROR, words)


FLOAT_KEYS = [(None, key) for key, tp, _ in schema_leaves(PretrainConfig) if unwrap_optional(tp)[0] is float]
FLOAT_KEYS += [(task, key) for task, schema in TASKS.items() for key, tp, _ in schema_leaves(schema)
               if unwrap_optional(tp)[0] is float or tp == typing.List[float]]


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("task,key", FLOAT_KEYS)
def test_every_number_must_be_finite(task, key, value, capsys):
    """Every float key of every schema (and each item of a list of floats) refuses inf and NaN."""
    item = f"[{value}, 0.5]" if key.endswith("betas") or key.endswith("scales") else value
    if task is None:
        assert pretrain_main(["--print-config", f"{key}={item}"]) == 2
        _one_named_line(capsys, PRETRAIN_ERROR, f"config key {key!r} must be", "finite number")
    else:
        assert evaluate_main([task, "--print-config", f"{key}={item}"]) == 2
        _one_named_line(capsys, f"python -m sigma.evaluate {task}: error: ", f"config key {key!r} must be",
                        "finite number")


# The evaluation tasks' ranges, a value on each side (knn temperature <= 0 overflowed its votes).
EVALUATE_RANGES = [
    ("knn", "k", 0, 1), ("knn", "temperature", 0, 0.01), ("knn", "temperature", -1, 0.07),
    ("knn", "num_clips", 0, 1), ("knn", "batch_size", 0, 1), ("knn", "label_column", -1, 0),
    ("linear", "lr", 0, 1e-3), ("linear", "epochs", -1, 0), ("linear", "seed", -1, 0),
    ("linear", "weight_decay", -1e-4, 0), ("finetune", "base_lr", 0, 1e-3), ("finetune", "min_lr", -1, 0),
    ("finetune", "layer_decay", 0, 1.0), ("finetune", "layer_decay", 1.5, 0.5), ("finetune", "drop_path", 1.0, 0.0),
    ("finetune", "label_smoothing", 1.0, 0.0), ("finetune", "mixup_prob", 1.5, 1.0),
    ("finetune", "mixup_switch_prob", -0.5, 0.0), ("finetune", "betas", "[0.9, 1.0]", "[0.9, 0.99]"),
    ("finetune", "clip_grad", 0, 1.0), ("finetune", "seed", -1, 0), ("finetune", "seed", 2**32, 7),
    ("finetune", "save_every", 0, 1), ("segment", "seed", -1, 0), ("segment", "size", 0, 1),
    ("segment", "overclustering_k", 0, 1), ("visualize", "alpha", 1.5, 1.0), ("visualize", "alpha", -0.1, 0.0),
    ("visualize", "k", 0, 1), ("visualize", "seed", -1, 0),
]


@pytest.mark.parametrize("task,key,bad,good", EVALUATE_RANGES)
def test_evaluate_ranges_are_named(task, key, bad, good, capsys):
    prefix = f"python -m sigma.evaluate {task}: error: "
    assert evaluate_main([task, "--print-config", f"{key}={bad}"]) == 2
    _one_named_line(capsys, prefix, f"config key {key!r} must be", f"got {bad}")
    assert evaluate_main([task, "--print-config", f"{key}={good}"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("task,key", EVALUATE_KEYS)
def test_evaluate_misspelt_key_is_named_with_a_hint(task, key, capsys):
    assert evaluate_main([task, "--print-config", f"{_typo(key)}=1"]) == 2
    _one_named_line(capsys, f"python -m sigma.evaluate {task}: error: ", f"unknown config key {_typo(key)!r}",
                    f"did you mean {key!r}")


# a list of names takes any word as one name (segment's --sequences): no wrong type to give it
@pytest.mark.parametrize("task,key,tp,meta", [(t, *leaf) for t, s in TASKS.items() for leaf in schema_leaves(s)
                                              if leaf[1] != typing.Optional[typing.List[str]]])
def test_evaluate_wrong_type_is_named(task, key, tp, meta, capsys):
    value, words = _wrong_value(tp, meta)
    prefix = f"python -m sigma.evaluate {task}: error: "
    assert evaluate_main([task, "--print-config", f"{key}={value}"]) == 2
    _one_named_line(capsys, prefix, f"config key {key!r}", "must be", words)
    inner, _ = unwrap_optional(tp)
    if inner is bool or (inner is str and not meta.get("choices")):
        return  # a switch takes no value; a path or name flag keeps its text as typed
    flag = "--" + key.replace("_", "-")
    if meta.get("choices"):  # checked on the merged settings, after every layer
        assert evaluate_main([task, flag, "nonsense", "--print-config"]) == 2
        _one_named_line(capsys, prefix, f"config key {key!r}", "must be", words, "'nonsense'")
    else:  # a type error names the flag it came from
        assert evaluate_main([task, flag, value, "--print-config"]) == 2
        _one_named_line(capsys, prefix + f"{flag}: ", f"config key {key!r}", "must be", words)


@pytest.mark.parametrize("argv,words", [
    (["knn", "--k", "many"], ("--k:", "'k' must be a positive integer", "'many'")),
    (["knn", "--views", "2", "x"], ("--views:", "'num_crops'")),
    (["finetune", "--batch-size", "0"], ("'batch_size' must be a positive integer",)),
    (["finetune", "--test-views", "2.5", "1"], ("'test_clips'",)),
    (["segment", "--background", "sky"], ("'background' must be one of class, ignore",)),
    (["segment", "--reduction", "mean"], ("one of sequence, clip, pooled",)),
    (["linear", "--amp", "fp8"], ("'amp' must be one of auto, bf16, fp16, none",)),
    (["visualize", "--alpha", "half"], ("'alpha' must be a finite number in [0.0, 1.0]",)),
])
def test_evaluate_flags_are_checked_like_keys(argv, words, capsys):
    assert evaluate_main([*argv, "--print-config"]) == 2
    _one_named_line(capsys, f"python -m sigma.evaluate {argv[0]}: error: ", *words)


@pytest.mark.parametrize("typed, names", [("clip00003", ["clip00003"]), ("a, b", ["a", "b"]), ("[a, b]", ["a", "b"]),
                                          ("00003", ["00003"]), ("null", None), ("[]", [])])
def test_segment_sequences_take_a_bare_name_or_comma_separated_names(typed, names, capsys):
    """`--sequences clip00003` was refused as not a list; only `[clip00003]` worked."""
    for argv in (["--sequences", typed], [f"sequences={typed}"]):
        assert evaluate_main(["segment", *argv, "--print-config"]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["sequences"] == names


def test_evaluate_needs_checkpoint_data_and_output_dir(capsys):
    with pytest.raises(SystemExit) as e:
        evaluate_main(["knn", "--data", "d", "--output-dir", "o"])
    assert e.value.code == 2 and "--checkpoint is required" in capsys.readouterr().err


@pytest.mark.parametrize("name", available_configs())
def test_pretrain_print_config_round_trips(name, tmp_path, capsys):
    overrides = ["optim.batch_size=3", "model.kwargs.depth=2", "objective.epsilon=3e-2", "data.root=/videos"]
    assert pretrain_main(["--config", name, "--print-config", *overrides]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    want = load_config(name, overrides)
    assert load_config(str(path)) == want and yaml.safe_load(text) == want
    assert _get(want, "optim.batch_size") == 3 and _get(want, "objective.epsilon") == 0.03
    assert pretrain_main(["--config", str(path), "--print-config"]) == 0
    assert capsys.readouterr().out == text


@pytest.mark.parametrize("task", list(TASKS))
def test_evaluate_print_config_round_trips(task, tmp_path, capsys):
    argv = [task, "--checkpoint", "ck.pt", "--data", "d", "seed=3" if task != "knn" else "k=3", "--print-config"]
    assert evaluate_main(argv) == 0
    text = capsys.readouterr().out
    printed = yaml.safe_load(text)
    assert printed["checkpoint"] == "ck.pt" and printed["data"] == "d"
    path = tmp_path / "task.yaml"
    path.write_text(text)
    assert evaluate_main([task, "--config", str(path), "--print-config"]) == 0
    assert capsys.readouterr().out == text


@pytest.mark.parametrize("task", list(TASKS))
def test_evaluate_cli_defaults_are_the_function_defaults(task, capsys):
    import sigma.evaluate as ev
    assert evaluate_main([task, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    params = inspect.signature(getattr(ev, task)).parameters
    assert set(printed) == set(params)
    for name, p in params.items():
        if p.default is inspect.Parameter.empty:
            assert printed[name] == "???", name  # required in both
        else:
            assert printed[name] == p.default, name


def test_finetune_and_knn_keep_the_recipe_defaults():
    import sigma.evaluate as ev
    ft = inspect.signature(ev.finetune).parameters
    recipe = {"epochs": 50, "batch_size": 8, "base_lr": 1e-3, "min_lr": 1e-6, "warmup_epochs": 5,
              "weight_decay": 0.05, "layer_decay": 0.75, "betas": [0.9, 0.999], "drop_path": 0.1,
              "label_smoothing": 0.1, "mixup": 0.8, "cutmix": 1.0, "randaug": "rand-m9-n2-mstd0.5-inc1",
              "flip": True, "test_clips": 5, "test_crops": 3, "seed": 0, "device": "auto", "amp": "auto"}
    assert {k: ft[k].default for k in recipe} == recipe
    knn = inspect.signature(ev.knn).parameters
    assert (knn["k"].default, knn["temperature"].default, knn["weighted"].default) == (20, 0.07, True)
    assert knn["output_dir"].default is None  # the Python API may skip writing; the CLI requires it


def test_evaluate_aliases_set_their_keys(capsys):
    assert evaluate_main(["knn", "--views", "2", "3", "--unweighted", "--no-progress", "--batch-size", "4",
                          "--print-config"]) == 0
    got = yaml.safe_load(capsys.readouterr().out)
    assert (got["num_clips"], got["num_crops"], got["weighted"], got["progress"], got["batch_size"]) == (2, 3, False,
                                                                                                           False, 4)
    # flags, then overrides anywhere on the line (the last word wins)
    assert evaluate_main(["finetune", "epochs=7", "--test-views", "2", "1", "--no-flip", "--randaug", "none",
                          "--epochs", "3", "--print-config"]) == 0
    got = yaml.safe_load(capsys.readouterr().out)
    assert (got["epochs"], got["test_clips"], got["test_crops"], got["flip"], got["randaug"]) == (7, 2, 1, False, None)


def test_a_function_cannot_keep_defaults_of_its_own():
    from sigma.engine.config import defaults_from
    from sigma.evaluate.config import VisualizeConfig

    def visualize(checkpoint, data, output_dir, *, metrics, k=7, seed, alpha, sampling_rate, max_videos, device,
                  progress):
        return k

    with pytest.raises(TypeError, match=r"remove those of \['k'\]"):
        defaults_from(VisualizeConfig)(visualize)

    def no_default(checkpoint, data, output_dir, *, metrics, k, seed, alpha, sampling_rate, max_videos, device,
                   progress):
        return k, seed, alpha, output_dir

    assert defaults_from(VisualizeConfig)(no_default)("c", "d", "o", k=2) == (2, 0, 0.5, "o")
    with pytest.raises(TypeError, match="differ in"):
        defaults_from(VisualizeConfig)(lambda checkpoint, data, output_dir: None)


def test_python_api_rejects_unknown_settings():
    import sigma.evaluate as ev
    with pytest.raises(TypeError, match="epochz"):
        ev.finetune("ck", "d", "o", epochz=3)


def test_overrides_merge_into_free_form_kwargs():
    # each override adds its key; an earlier one is kept (the mapping is merged, not replaced)
    cfg = load_config("tiny", ["model.kwargs.depth=1", "model.kwargs.decoder_depth=1"])
    assert cfg["model"]["kwargs"] == {"depth": 1, "decoder_depth": 1}
    cfg = load_config("vit_s_k400_dino", ["projection.kwargs.weights=/w/dino.pth", "projection.kwargs.x=[1, 2]"])
    assert cfg["projection"]["kwargs"] == {"weights": "/w/dino.pth", "x": [1, 2]}


def test_files_inherit_interpolate_and_name_their_mistakes(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("inherit: tiny\noptim:\n  batch_size: 4\n")
    user = tmp_path / "user.yaml"
    user.write_text(f"inherit: {base}\noptim:\n  epochs: 3\n  max_steps: ${{optim.epochs}}\n")
    cfg = load_config(str(user))
    assert (cfg["optim"]["batch_size"], cfg["optim"]["epochs"], cfg["optim"]["max_steps"]) == (4, 3, 3)
    assert cfg["model"]["name"] == "sigma_vit_tiny_patch16"
    user.write_text("inherit: tiny\noptim:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"user\.yaml: config key 'optim\.epochs' must be a positive integer"):
        load_config(str(user))
    user.write_text("inherit: tiny\noptim: 3\n")
    with pytest.raises(ConfigError, match="'optim' is a section"):
        load_config(str(user))
    user.write_text("optim:\n  epochs: 1\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="not valid YAML.*duplicate key"):
        load_config(str(user))
    user.write_text(f"inherit: {user}\n")
    with pytest.raises(ConfigError, match="inheritance loops"):
        load_config(str(user))


@pytest.mark.parametrize("override,match", [
    ("optim.batch_size", "must look like key=value"),
    ("=3", "empty key"),
    ("optim..epochs=3", "empty key"),
    ("optim.betas[0]=0.8", "a list is set whole"),
    ("model.name=${oops", r"'model\.name' is not a valid \$\{\.\.\.\} interpolation"),
    ("optim.epochs=${nope}", "'optim.epochs': Interpolation key 'nope' not found"),
    ("optim=8", "'optim' is a section"),
])
def test_bad_override_syntax_is_one_named_line(override, match, capsys):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", [override])
    assert pretrain_main(["--print-config", override]) == 2
    _one_named_line(capsys, PRETRAIN_ERROR)


def test_config_is_plain_and_weights_only_loadable(tmp_path):
    cfg = load_config("vit_b_ssv2_dino", ["projection.kwargs.weights=/w.pth"])

    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, list):
            return all(plain(v) for v in x)
        return x is None or type(x) in (bool, int, float, str)

    assert plain(cfg)
    torch.save({"config": cfg}, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["config"] == cfg


@pytest.mark.parametrize("cmd,prefix", [
    ([sys.executable, "-m", "sigma.pretrain", "--print-config", "optim.batchsize=3"], PRETRAIN_ERROR),
    ([sys.executable, "-m", "sigma.evaluate", "knn", "--checkpoint", "c", "--data", "d", "--output-dir", "o",
      "--k", "abc"], "python -m sigma.evaluate knn: error: "),
])
def test_cli_processes_exit_2_with_one_line(cmd, prefix):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(prefix) and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_a_mapping_for_a_list_key_is_a_named_config_error(capsys):
    """Was: a raw TypeError traceback (OmegaConf's 'Cannot merge incompatible container types')."""
    from sigma.evaluate.__main__ import main
    rc = main(["finetune", "--checkpoint", "x", "--data", "y", "--output-dir", "z", "betas={a: 1}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "incompatible container types" in err and "betas.a" in err
