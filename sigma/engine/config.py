"""One config system for every CLI and Python entry point: dataclasses are the schema, OmegaConf merges.

A schema is a dataclass whose fields are `setting(...)`s (type, default, allowed values, range,
help) or `section(...)`s (a nested schema). `compose(schema, layers)` merges mappings onto it in
order with OmegaConf (YAML files, `inherit:` chains, dotted `key=value` overrides) and returns a
plain dict (lists, dicts, scalars: what checkpoints and `config.yaml` hold). Every mistake is a
`ConfigError` of one line naming the key: unknown keys (with a "did you mean" hint), wrong types
(OmegaConf's validation, reworded from the schema), values out of range or outside the choices.
Mappings typed `Dict[str, Any]` are free-form (forwarded as **kwargs; their consumer checks them).

`defaults_from(schema)` makes a function take its defaults from the same dataclass, so a CLI and
the Python API cannot drift apart. OmegaConf is imported only where configs are merged or printed:
defining a schema or calling a decorated function needs the standard library alone.
"""
import copy
import dataclasses
import difflib
import functools
import inspect
import math
import typing
from importlib import resources
from pathlib import Path

from .files import first_line

# OmegaConf's documented marker of a value that must be given (omegaconf.MISSING).
REQUIRED = "???"


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names it."""


# --- schema ----------------------------------------------------------------------------------------

def setting(default=REQUIRED, *, help="", choices=None, minimum=None, above=None, maximum=None, below=None,
            length=None, check=None):
    """A schema field: `choices` (allowed values), `minimum` / `above` (value >= / > it), `maximum` /
    `below` (value <= / < it), `length` (of a list; the bounds then hold for each item). A float
    must be finite. `check(value)` is a check of the machine (device available, path usable): None
    when fine, else what is wrong; `check_environment` runs it. Mutable defaults are copied per instance."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "minimum": minimum, "above": above,
            "maximum": maximum, "below": below, "length": length, "check": check}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(schema, help=""):
    """A nested schema (a mapping of its own keys in the config)."""
    return dataclasses.field(default_factory=schema, metadata={"help": help})


def default_of(f):
    """The default of dataclass field `f` (REQUIRED when it has none)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED if f.default is dataclasses.MISSING else f.default


def unwrap_optional(tp):
    """(inner type, optional) of Optional[inner]; (tp, False) for any other type."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _is_schema(tp):
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def schema_fields(schema):
    """{name: (type, metadata)} of a schema's fields, annotations resolved."""
    hints = typing.get_type_hints(schema)
    return {f.name: (hints[f.name], f.metadata) for f in dataclasses.fields(schema)}


def schema_keys(schema, prefix=""):
    """Every dotted key of a schema: sections and leaves."""
    keys = []
    for name, (tp, _) in schema_fields(schema).items():
        keys.append(prefix + name)
        if _is_schema(tp):
            keys += schema_keys(tp, f"{prefix}{name}.")
    return keys


def schema_leaves(schema, prefix=""):
    """[(dotted key, type, metadata)] of every leaf setting of a schema."""
    out = []
    for name, (tp, meta) in schema_fields(schema).items():
        if _is_schema(tp):
            out += schema_leaves(tp, f"{prefix}{name}.")
        else:
            out.append((prefix + name, tp, meta))
    return out


def _field_at(schema, key):
    """(type, metadata) of dotted `key` ((Any, {}) inside a free-form mapping)."""
    tp, meta = schema, {}
    for part in key.split("."):
        if not _is_schema(tp):
            return typing.Any, {}
        tp, meta = schema_fields(tp)[part.split("[")[0]]
    return tp, meta


def _bounds(meta):
    """The range of a number setting in words ('' when unbounded): "in (0, 1)", ">= 0", "<= 255"."""
    lo = ("[", meta.get("minimum")) if meta.get("minimum") is not None else ("(", meta.get("above"))
    hi = ("]", meta.get("maximum")) if meta.get("maximum") is not None else (")", meta.get("below"))
    if lo[1] is not None and hi[1] is not None:
        return f" in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo[1] is not None:
        return f" {'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi[1] is not None:
        return f" {'<=' if hi[0] == ']' else '<'} {hi[1]}"
    return ""


def _in_range(value, meta):
    """Whether the number `value` is finite (floats) and within the setting's bounds."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    low, above, high, below = (meta.get(k) for k in ("minimum", "above", "maximum", "below"))
    return ((low is None or value >= low) and (above is None or value > above)
            and (high is None or value <= high) and (below is None or value < below))


def expected(tp, meta):
    """What a value of this field must be, in words (for error messages and help)."""
    inner, optional = unwrap_optional(tp)
    choices, bounds = meta.get("choices"), _bounds(meta)
    origin = typing.get_origin(inner)
    if choices:
        text = "one of " + ", ".join(str(c) for c in choices)
    elif inner is bool:
        text = "true or false"
    elif inner is int:
        text = {" >= 1": "a positive integer", " >= 0": "a non-negative integer"}.get(bounds, "an integer" + bounds)
    elif inner is float:
        text = "a finite number" + bounds
    elif inner is str:
        text = "a string"
    elif origin in (list, tuple):
        (item,) = typing.get_args(inner)[:1] or (typing.Any,)
        words = {float: "finite numbers", int: "integers", str: "strings"}.get(item, "values")
        text = f"a list of {meta['length']} {words}" if meta.get("length") else f"a list of {words}"
        text += f", each{bounds}" if bounds else ""
    elif origin is dict:
        text = "a mapping"
    elif _is_schema(inner):
        text = "a section (a mapping of its keys)"
    else:
        text = "a value"
    return text + (" or null" if optional else "")


def _hint(key, schema):
    close = difflib.get_close_matches(key, schema_keys(schema), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(schema, update, where, prefix="", root=None):
    """Every key of mapping `update` exists in `schema` (a section of `root`); sections get mappings."""
    known = schema_fields(schema)
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{where}: unknown config key {path!r}{_hint(path, root or schema)}")
        tp = known[key][0]
        if _is_schema(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: config key {path!r} is a section and needs a mapping of its keys "
                                  f"({', '.join(schema_fields(tp))}), got {value!r}")
            check_keys(tp, value, where, path + ".", root or schema)


def check_values(schema, cfg, prefix=""):
    """Choices, ranges (each item of a list), finite floats and list lengths of a merged plain config
    (types are already checked)."""
    for name, (tp, meta) in schema_fields(schema).items():
        value, key = cfg[name], prefix + name
        if _is_schema(tp):
            check_values(tp, value, key + ".")
            continue
        if value is None or value == REQUIRED:
            continue
        choices, length = meta.get("choices"), meta.get("length")
        numbers = [v for v in (value if isinstance(value, list) else [value])
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        ok = ((not choices or value in choices) and all(_in_range(v, meta) for v in numbers)
              and (length is None or len(value) == length))
        if not ok:
            raise ConfigError(f"config key {key!r} must be {expected(tp, meta)}, got {value!r}")


def check_environment(schema, cfg, prefix=""):
    """Run the `check`s of a merged plain config's settings (is the device there, is a path usable):
    what the machine decides, so left out of `compose` (a config printed or loaded elsewhere is fine)."""
    for name, (tp, meta) in schema_fields(schema).items():
        value, key = cfg[name], prefix + name
        if _is_schema(tp):
            check_environment(tp, value, key + ".")
        elif meta.get("check") and value is not None and value != REQUIRED:
            problem = meta["check"](value)
            if problem:
                raise ConfigError(f"config key {key!r}: {problem}")


def device_problem(value):
    """Why the torch device `value` ("auto", "cpu", "cuda", "cuda:1", ...) cannot be used here, or None."""
    import torch

    if value == "auto":
        return None
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        return f"{value!r} is not a device (auto, cpu, cuda, cuda:N)"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return f"{value!r} was asked for but no CUDA device is available here (use cpu or auto)"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"{value!r} was asked for but there are {torch.cuda.device_count()} CUDA device(s)"
    elif dev.type != "cpu":
        return f"{value!r}: only cpu and cuda devices are supported"
    return None


def existing_path(value):
    """None when `value` names an existing file or folder, else what is wrong."""
    return None if Path(value).exists() else f"{value!r} does not exist"


def folder_path(value):
    """None when `value` is a folder or can become one (nothing there yet), else what is wrong."""
    path = Path(value)
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else f"{str(p)!r} is a file, not a folder"
    return None


# --- merging ---------------------------------------------------------------------------------------

def compose(schema, layers):
    """Merge `layers` ([(where, mapping)], lowest first) onto the schema's defaults; a plain dict.

    Types are converted and checked by OmegaConf (`1e-4` and `"8"` become numbers where the schema
    says so); `${key}` interpolations are resolved; required values left unset stay "???"."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for where, update in layers:
        check_keys(schema, update, where)
    try:  # one merge of every layer: OmegaConf copies the whole tree at each merge
        cfg = OmegaConf.merge(_structured(schema), *(update for _, update in layers))
    except (OmegaConfBaseException, TypeError):  # TypeError: a mapping given for a list, or the reverse
        cfg = _structured(schema)
        for where, update in layers:  # again one layer at a time, to name the one at fault
            try:
                cfg = OmegaConf.merge(cfg, update)
            except OmegaConfBaseException as e:
                raise _named(e, schema, where) from None
            except TypeError as e:
                raise ConfigError(f"{where}: {first_line(e)} (a mapping where a list or a value is expected, "
                                  f"or the reverse; it sets {', '.join(_dotted_keys(update))})") from None
        raise
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config key {e.full_key!r}: {first_line(e)}") from None
    check_values(schema, plain)
    return plain


def _dotted_keys(update, prefix=""):
    """The dotted keys a layer sets, for naming them in an error."""
    keys = []
    for key, value in update.items():
        name = f"{prefix}{key}"
        keys += _dotted_keys(value, name + ".") if isinstance(value, dict) and value else [name]
    return keys


@functools.lru_cache(maxsize=None)
def _structured(schema):
    """The schema's defaults as a typed DictConfig (merge copies it, so one per schema serves every call)."""
    from omegaconf import OmegaConf

    return OmegaConf.structured(schema)


def _named(error, schema, where):
    """An OmegaConf merge error as one line naming the key and what it must be."""
    from omegaconf.errors import GrammarParseError

    key = str(error.full_key or "")
    if isinstance(error, GrammarParseError):  # a '${' that opens no valid interpolation
        return ConfigError(f"{where}: config key {key!r} is not a valid ${{...}} interpolation: "
                           f"{first_line(error)}")
    tp, meta = _field_at(schema, key.split("[")[0]) if key else (typing.Any, {})
    value = getattr(error, "value", None)
    if key.endswith("]"):  # a list item: name the list and the item
        return ConfigError(f"{where}: config key {key!r} must be an item of {expected(tp, meta)}, got {value!r}")
    if key:
        return ConfigError(f"{where}: config key {key!r} must be {expected(tp, meta)}, got {value!r}")
    return ConfigError(f"{where}: {first_line(error)}")


def parse_override(text):
    """'a.b=value' -> ('a.b', value); the value is read as YAML (numbers incl. `1e-4`, bools, null,
    lists, mappings) as OmegaConf's dotlist does, and kept as a string when it is not valid YAML."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. optim.batch_size=8)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    if "[" in key or "]" in key:
        raise ConfigError(f"override {text!r}: a list is set whole, e.g. optim.betas=[0.9,0.99]")
    try:
        nested = OmegaConf.to_container(OmegaConf.from_dotlist([f"{key}={raw}"]), resolve=False)
    except (yaml.YAMLError, OmegaConfBaseException):  # not YAML: the text itself, as typed
        return key, raw
    for part in key.split("."):
        nested = nested[part]
    return key, nested


def override_layer(key, value):
    """The mapping {a: {b: value}} of dotted key 'a.b'."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def read_yaml(name_or_path, package=None):
    """(mapping, where) of a YAML file, or of a config shipped in `package` by name."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(str(name_or_path))
    if package is None or path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        text, where = path.read_text(), str(path)
    else:
        res = resources.files(package) / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown config {name_or_path!r}: neither a YAML file nor a shipped config "
                              f"(shipped: {', '.join(shipped_configs(package))})")
        text, where = res.read_text(), f"{name_or_path} (shipped)"
    try:  # OmegaConf's YAML reader: `1e-4` is a float (plain YAML 1.1 wants `1.0e-4`), duplicate keys are errors
        data = OmegaConf.to_container(OmegaConf.create(text), resolve=False) if text.strip() else {}
    except (yaml.YAMLError, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"config {where} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {where} must be a mapping at the top level, got {type(data).__name__}")
    return data, where


def shipped_configs(package):
    """Names of the YAML configs shipped in `package`."""
    return sorted(p.name[:-5] for p in resources.files(package).iterdir() if p.name.endswith(".yaml"))


def inherit_chain(name_or_path, package=None, base="default", seen=()):
    """[(where, mapping)] of a config and the configs it `inherit:`s, the base-most first. `base`
    names the schema's own defaults (no file)."""
    if name_or_path == base:
        return []
    data, where = read_yaml(name_or_path, package)
    if where in seen:
        raise ConfigError(f"config inheritance loops through {where}")
    parent = data.pop("inherit", base)
    if not isinstance(parent, str):
        raise ConfigError(f"{where}: 'inherit' must name a config or a YAML file, got {parent!r}")
    return inherit_chain(parent, package, base, seen + (where,)) + [(where, data)]


def dump_config(cfg):
    """The config as YAML text (what `compose` reads back to the same dict)."""
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False)


_ABSENT = "(absent)"


def config_changes(old, new, prefix=""):
    """[(dotted key, old value, new value)] of every setting where plain config `new` differs from `old`."""
    changed = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, _ABSENT), new.get(k, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            changed.append((f"{prefix}{k}", a, b))
    return changed


def listed_changes(changed):
    """`config_changes` in one line: 'key was OLD, now NEW; ...'."""
    return "; ".join(f"{k} was {a!r}, now {b!r}" for k, a, b in changed)


def invoked_as(module, script=None):
    """The command the user typed, to prefix errors with: `script` when the process runs that
    installed entry point (sys.argv[0] is it), else `python -m module`."""
    import sys

    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if script and (name == script or name.startswith(script + ".")):  # .exe / -script.py on Windows
        return script
    return f"python -m {module}"


# --- functions that take their defaults from a schema ------------------------------------------------

def defaults_from(schema):
    """Decorator: the function's parameters are exactly the schema's fields, and every parameter
    not passed takes the schema's default (fields without one stay required)."""
    def wrap(fn):
        sig = inspect.signature(fn)
        fields = {f.name: f for f in dataclasses.fields(schema)}
        if set(sig.parameters) != set(fields):
            raise TypeError(f"{fn.__qualname__} and {schema.__name__} must name the same settings; differ in "
                            f"{sorted(set(sig.parameters) ^ set(fields))}")
        own = [p.name for p in sig.parameters.values() if p.default is not inspect.Parameter.empty]
        if own:  # a second default would be silently ignored: keep one place
            raise TypeError(f"{fn.__qualname__} takes its defaults from {schema.__name__}; remove those of {own}")
        defaults = {n: f for n, f in fields.items() if default_of(f) != REQUIRED}

        @functools.wraps(fn)
        def call(*args, **kwargs):
            bound = sig.bind_partial(*args, **kwargs)
            for name, f in defaults.items():
                bound.arguments.setdefault(name, default_of(f))
            return fn(*bound.args, **bound.kwargs)

        call.__signature__ = sig.replace(parameters=[
            p.replace(default=default_of(defaults[p.name])) if p.name in defaults else p
            for p in sig.parameters.values()])
        return call
    return wrap


__all__ = ["REQUIRED", "ConfigError", "check_environment", "compose", "config_changes", "default_of",
           "defaults_from", "device_problem", "dump_config", "existing_path", "expected", "folder_path",
           "inherit_chain", "invoked_as", "listed_changes", "override_layer", "parse_override", "read_yaml",
           "schema_fields", "schema_keys", "schema_leaves", "section", "setting", "shipped_configs",
           "unwrap_optional"]
