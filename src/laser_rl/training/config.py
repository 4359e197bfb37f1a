"""The ``laser train`` configuration: nested dataclasses, loaded from YAML plus ``key=value`` overrides.

A training run is expensive, so a typo or a wrong type must fail *before* any model is loaded, with a
message naming the file, the line, the key and the closest valid key. The concerns live in one module
each: the schema (:mod:`~laser_rl.training.config_schema`, every field with its help text in
``metadata["help"]``), YAML 1.2 reading/writing with line numbers (:mod:`~laser_rl.training.config_yaml`),
the checks (:mod:`~laser_rl.training.config_checks`); this module is the public API and the
``key=value`` overrides, and re-exports the schema's names.

Libraries, and why these: **pydantic v2** checks the types. Its strict JSON-mode validation of the
plain dataclasses below is exactly the rule this project wants: an integer is promoted to a float where
a float is expected and nothing else is converted (``"abc"`` for a float, ``3.5`` for an integer,
``5`` for a string, ``true`` for a number, ``.nan`` anywhere are errors); ``Literal`` and unions such
as ``float | Literal["auto"]`` work as written; unknown keys are rejected with their path. **PyYAML**
reads the file and keeps a compose pass for the line of every key (and duplicate keys).
OmegaConf structured configs (as torchtune and verl use) were tried first (2.4.0, which vendors its
ANTLR runtime, so math-verify's antlr4 pin is no obstacle) and rejected for what they do to values:
they convert ``"3"`` to 3, ``1`` to true, ``5`` to ``"5"`` and list items to strings, accept NaN, read
``yes``, ``010`` and ``1:30`` with YAML 1.1 rules, reject an integer for ``float | Literal["auto"]``,
treat ``${...}`` inside any string (an instruction text, a stop token) as an interpolation, and keep
no line numbers; keeping today's behaviour would have meant a strict checker of our own on top.

YAML is read with YAML 1.2 scalar rules (PyYAML defaults to YAML 1.1): booleans are only
``true``/``false``, ``1e-6`` is a float, ``010`` is ten (details in config_yaml). Override values use
the same rules.

Public API: :func:`load_config`, :func:`config_from_yaml`, :func:`config_from_dict`,
:func:`config_to_dict`, :func:`config_to_yaml`, :func:`config_fields`. The ``laser train`` argument
parser lives with its command (:func:`laser_rl.commands.train.parse_train_argv`).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import yaml

from laser_rl.core import AGGREGATIONS
from laser_rl.errors import LaserError
from laser_rl.training.config_checks import (
    describe_type,
    locator,
    make_config,
    schema_keys,
    suggest_key,
    union_members,
    walk_schema,
)
from laser_rl.training.config_schema import (
    DEFAULT_INSTRUCTION,
    DataConfig,
    GuardConfig,
    LaserConfig,
    LoggingConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    TrainConfig,
    TrainLoopConfig,
)
from laser_rl.training.config_yaml import YamlLoader, dump_yaml, kind_of, parse_yaml

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_INSTRUCTION",
    "DataConfig",
    "GuardConfig",
    "LaserConfig",
    "LoggingConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RolloutConfig",
    "TrainConfig",
    "TrainLoopConfig",
    "config_fields",
    "config_from_dict",
    "config_from_yaml",
    "config_to_dict",
    "config_to_yaml",
    "load_config",
    "resolve_config_path",
]


def config_from_dict(d: dict[str, Any], source: str = "<dict>") -> TrainConfig:
    """Build and validate a config from a nested dict (missing keys take their defaults).

    ``source`` names where the dict came from in error messages (a file, a checkpoint, ...).
    """
    if not isinstance(d, dict):
        raise LaserError(f"{source}: the config must be a mapping, got {kind_of(d)}")
    return make_config(d, lambda key: source)


def config_from_yaml(text: str, source: str = "<string>") -> TrainConfig:
    """Parse and validate a config from YAML text; errors name ``source`` and the line."""
    data, lines = parse_yaml(text, source)
    return make_config(data, locator(source, lines, {}))


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as a nested dict of plain values (lists copied)."""
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: TrainConfig, *, comments: bool = True, header: str | None = None) -> str:
    """The config as YAML that :func:`load_config` (and plain PyYAML) reads back to an equal config.

    With ``comments`` every key is preceded by its help text; ``header`` (may span lines) goes on top.
    """
    out = [f"# {line}".rstrip() for line in header.splitlines()] + [""] if header else []
    # block sections, flow lists and one-line strings: line i of the dump is schema key i
    body = dump_yaml(config_to_dict(cfg)).splitlines()
    for line, (_key, f, tp) in zip(body, walk_schema(), strict=True):
        if dataclasses.is_dataclass(tp) and out and out[-1] != "":
            out.append("")
        if comments:
            out.append(f"{line[: len(line) - len(line.lstrip())]}# {f.metadata['help']}")
        out.append(line)
    return "\n".join(out) + "\n"


def config_fields() -> list[tuple[str, str, Any, str]]:
    """(dotted key, type description, default, help) for every leaf key, in schema order (for docs)."""
    defaults = TrainConfig()
    return [
        (key, describe_type(tp), functools.reduce(getattr, key.split("."), defaults), f.metadata["help"])
        for key, f, tp in walk_schema()
        if not dataclasses.is_dataclass(tp)
    ]


# ---------------------------------------------------------------------------------------- overrides


_NULLS = {"", "~", "null", "Null", "NULL"}


def _parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` -> (dotted key, value read with the file's YAML rules)."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise LaserError(f"override '{text}': expected key=value (e.g. train.steps=100)")
    if key not in schema_keys():
        raise LaserError(f"override '{text}': unknown key '{key}'{suggest_key(key)}")
    try:
        value = yaml.load(raw, Loader=YamlLoader)  # YamlLoader is a SafeLoader
    except yaml.YAMLError as e:
        detail = getattr(e, "problem", None) or str(e)
        raise LaserError(f"override '{text}': invalid value ({detail}); quote it if it is a string") from None
    if value is None and raw.strip() not in _NULLS:  # e.g. '#x' is a YAML comment: keep the text
        value = raw
    if value is None and raw.strip() == "" and type(None) not in union_members(schema_keys()[key]):
        value = ""  # `data.instruction=` clears a string; a nullable key becomes null
    return key, value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Load ``path`` (YAML; ``None`` = defaults only), apply ``key=value`` overrides in order, validate.

    Override values use the same YAML scalar rules as the file: ``laser.c_ref=auto``, ``optim.lr=1e-6``,
    ``rollout.stop_tokens=[a,b]``, ``logging.wandb_project=null``, ``laser={alpha: 0.5}`` (merged into
    the section). A later override of the same key wins. Errors name the file and line, or the
    override, and suggest the closest valid key.
    """
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if path is not None:
        path = resolve_config_path(path)
    source = "" if path is None else str(path)
    if path is not None:
        data, lines = parse_yaml(_read_text(Path(path)), source)
    origins: dict[str, str] = {}
    for text in overrides:
        key, value = _parse_override(text)
        _set_dotted(data, key, value)
        origins[key] = f"override '{text}'"
    return make_config(data, locator(source, lines, origins))


def resolve_config_path(path: str | Path, base_model: bool = False) -> Path:
    """``path`` itself when it exists; otherwise a shipped config of that name, so an installed
    package serves ``--config paper/qwen2.5-7b-laser.yaml`` (or ``configs/paper/...``) from anywhere.
    ``base_model``: the error lists the shipped ``laser base`` settings (demo/base-*.yaml) instead
    of the training configs."""
    from laser_rl.io import SHIPPED_CONFIGS

    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    shipped = SHIPPED_CONFIGS.joinpath(*parts) if parts else SHIPPED_CONFIGS
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.relative_to(SHIPPED_CONFIGS).as_posix() for p in SHIPPED_CONFIGS.glob("*/*.yaml")
                             if p.parent.name != "accelerate" and p.name.startswith("base-") == base_model))
    raise LaserError(f"{path}: config file not found (nor among the shipped configs: {names})")


def _read_text(path: Path) -> str:
    if not path.exists():
        raise LaserError(f"{path}: config file not found")
    if not path.is_file():
        raise LaserError(f"{path}: not a file (expected a YAML config)")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LaserError(f"{path}: cannot read config ({e})") from None


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        value = {**node[last], **value}  # `laser={alpha: 0.5}` sets keys of the section, keeps the rest
    node[last] = value
