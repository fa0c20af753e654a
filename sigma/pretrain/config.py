"""Pretraining configs: YAML files with `inherit:`, dotted `key=value` overrides, strict keys.

Every valid key and its default lives in `configs/default.yaml`; a config names only what it
changes. Keys under a `kwargs` mapping are passed through to the model / projection factories and
are not checked here (the factory rejects what it does not take).
"""
import copy
import difflib
import re
from importlib import resources
from pathlib import Path

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` as a string (it wants `1.0e-4`); researchers write both, so accept both."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))

CONFIG_PACKAGE = "sigma.pretrain.configs"
# Mappings whose keys are free-form (forwarded as **kwargs).
OPEN_SECTIONS = ("model.kwargs", "projection.kwargs")


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names it."""


def available_configs():
    """Names of the configs shipped with the package (usable as `--config NAME`)."""
    return sorted(p.name[:-5] for p in resources.files(CONFIG_PACKAGE).iterdir()
                  if p.name.endswith(".yaml") and p.name != "default.yaml")


def _read_yaml(name_or_path):
    """(mapping, where) for a shipped config name or a path to a YAML file."""
    path = Path(str(name_or_path))
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        text, where = path.read_text(), str(path)
    else:
        res = resources.files(CONFIG_PACKAGE) / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown config {name_or_path!r}: neither a YAML file nor a shipped config "
                              f"(shipped: {', '.join(available_configs())})")
        text, where = res.read_text(), f"{name_or_path} (shipped)"
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"config {where} is not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {where} must be a mapping at the top level, got {type(data).__name__}")
    return data, where


def _is_open(path):
    return any(path == s or path.startswith(s + ".") for s in OPEN_SECTIONS)


def _merge(base, update, where, prefix=""):
    """Recursively merge `update` into `base` (in place); keys must exist in `base`."""
    for key, value in update.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str):
            raise ConfigError(f"{where}: config keys must be strings, got {key!r} in {prefix or 'the top level'}")
        if key not in base and not _is_open(prefix.rstrip(".")):
            close = difflib.get_close_matches(key, [str(k) for k in base], n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown config key {path!r}{hint}")
        if isinstance(base.get(key), dict) and not _is_open(path):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {path!r} is a section and needs a mapping, got {value!r}")
            _merge(base[key], value, where, path + ".")
        else:
            base[key] = copy.deepcopy(value)
    return base


def _load_chain(name_or_path, seen=()):
    if name_or_path == "default":
        return _read_yaml("default")[0]
    data, where = _read_yaml(name_or_path)
    if where in seen:
        raise ConfigError(f"config inheritance loops through {where}")
    parent = data.pop("inherit", "default")
    return _merge(_load_chain(parent, seen + (where,)), data, where)


def parse_override(text):
    """'a.b=value' -> ('a.b', parsed value); the value is read as YAML (numbers, bools, null, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. optim.batch_size=8)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_override(config, key, value):
    """Set the dotted `key` of `config` to `value`; unknown keys are errors naming them."""
    parts = key.split(".")
    update = value
    for part in reversed(parts):
        update = {part: update}
    return _merge(config, update, "override")


def load_config(name_or_path="tiny", overrides=()):
    """The resolved config dict: defaults <- inherited configs <- this config <- `key=value` overrides."""
    config = _load_chain(name_or_path)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        apply_override(config, key, value)
    validate(config)
    return config


def _require(cond, key, expected, value):
    if not cond:
        raise ConfigError(f"config key {key!r} must be {expected}, got {value!r}")


def validate(cfg):
    """Type and range checks of the values the trainer relies on (clear errors naming the key)."""
    def pos_int(key, v, allow_none=False):
        _require((v is None and allow_none) or (isinstance(v, int) and not isinstance(v, bool) and v > 0), key,
                 "a positive integer" + (" or null" if allow_none else ""), v)

    def number(key, v, lo=None, allow_none=False):
        ok = (v is None and allow_none) or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                           and (lo is None or v >= lo))
        _require(ok, key, "a number" + (f" >= {lo}" if lo is not None else "") + (" or null" if allow_none else ""), v)

    _require(isinstance(cfg["seed"], int) and not isinstance(cfg["seed"], bool), "seed", "an integer", cfg["seed"])
    _require(cfg["device"] in ("auto", "cpu", "cuda"), "device", "one of auto, cpu, cuda", cfg["device"])
    _require(cfg["amp"] in ("auto", "fp16", "bf16", "none"), "amp", "one of auto, fp16, bf16, none", cfg["amp"])
    _require(isinstance(cfg["model"]["name"], str), "model.name", "a model name", cfg["model"]["name"])
    for sec in ("model", "projection"):
        _require(isinstance(cfg[sec]["kwargs"], dict), f"{sec}.kwargs", "a mapping", cfg[sec]["kwargs"])
    d = cfg["data"]
    for k in ("num_frames", "sampling_rate", "img_size", "patch_size", "tubelet_size"):
        pos_int(f"data.{k}", d[k])
    number("data.mask_ratio", d["mask_ratio"], 0.0)
    _require(d["mask_ratio"] < 1, "data.mask_ratio", "in [0, 1)", d["mask_ratio"])
    _require(isinstance(d["num_workers"], int) and d["num_workers"] >= 0, "data.num_workers",
             "a non-negative integer", d["num_workers"])
    _require(cfg["projection"]["kind"] in ("mlp", "dino", "pixels"), "projection.kind", "one of mlp, dino, pixels",
             cfg["projection"]["kind"])
    pos_int("projection.out_dim", cfg["projection"]["out_dim"])
    o = cfg["objective"]
    _require(o["name"] in ("sigma", "pixel", "l2"), "objective.name", "one of sigma, pixel, l2", o["name"])
    pos_int("objective.num_prototypes", o["num_prototypes"])
    pos_int("objective.sinkhorn_iterations", o["sinkhorn_iterations"])
    number("objective.epsilon", o["epsilon"], 1e-3)
    number("objective.temperature", o["temperature"], 1e-6)
    _require(o["targets"] in ("hard", "soft"), "objective.targets", "hard or soft", o["targets"])
    p = cfg["optim"]
    for k in ("epochs", "batch_size", "accum_steps"):
        pos_int(f"optim.{k}", p[k])
    pos_int("optim.max_steps", p["max_steps"], allow_none=True)
    for k in ("base_lr", "min_lr", "warmup_lr", "weight_decay", "warmup_epochs"):
        number(f"optim.{k}", p[k], 0.0)
    number("optim.clip_grad", p["clip_grad"], 0.0, allow_none=True)
    _require(isinstance(p["betas"], (list, tuple)) and len(p["betas"]) == 2, "optim.betas", "a list of two numbers",
             p["betas"])
    pos_int("log.every", cfg["log"]["every"])
    pos_int("log.stats_every", cfg["log"]["stats_every"])
    pos_int("checkpoint.every", cfg["checkpoint"]["every"])
    pos_int("checkpoint.keep", cfg["checkpoint"]["keep"], allow_none=True)
    return cfg


def dump_config(cfg):
    """The config as YAML text (what `load_config` reads back to the same dict)."""
    return yaml.safe_dump(cfg, sort_keys=False)
