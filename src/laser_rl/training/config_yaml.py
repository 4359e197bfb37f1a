"""YAML for the ``laser train`` config, read with YAML 1.2 scalar rules and the line of every key.

PyYAML defaults to YAML 1.1; here booleans are only ``true``/``false`` (``yes``/``no``/``on``/``off``
stay strings), ``1e-6`` is a float, ``010`` is ten, ``1:30`` is a string (not sexagesimal 90) and dates
stay strings. Override values (``key=value``) use the same rules. :func:`dump_yaml` writes strings
that either rule set would read as something else quoted, so a dump reads back to the same values.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from laser_rl.errors import LaserError

__all__ = ["YamlLoader", "dump_yaml", "kind_of", "parse_yaml"]


_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_RE = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_RESOLVERS = (
    ("tag:yaml.org,2002:bool", _BOOL_RE, "tTfF"),
    ("tag:yaml.org,2002:int", _INT_RE, "-+0123456789"),  # before float: both match "12", the first wins
    ("tag:yaml.org,2002:float", _FLOAT_RE, "-+0123456789."),
)


class YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema booleans/numbers and no timestamps."""


YamlLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if not tag.endswith(("bool", "int", "float", "timestamp"))]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node)
    return int(text, 0 if "0o" in text or "0x" in text else 10)  # YAML 1.2: 010 is ten, 0o10 eight


YamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _Dumper(yaml.SafeDumper):
    """Quotes any string that either YAML 1.1 or our 1.2 rules would read as a non-string."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    # plain or single-quoted, a line break would continue the value on the next line: escape it
    style = '"' if any(c in text for c in "\n\r\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


def _represent_list(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=True)


for _tag, _rx, _first in _RESOLVERS:
    YamlLoader.add_implicit_resolver(_tag, _rx, list(_first))
    _Dumper.add_implicit_resolver(_tag, _rx, list(_first))
_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def dump_yaml(value: Any) -> str:
    """YAML for ``value``: block mappings, flow lists, every scalar on one line."""
    text = yaml.dump(value, Dumper=_Dumper, sort_keys=False, width=1 << 30, allow_unicode=True)
    return text.removesuffix("\n...\n").rstrip("\n")


def parse_yaml(text: str, source: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse a YAML document into a dict plus the line of every dotted key (duplicate keys are errors)."""
    loader = YamlLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        detail = ", ".join(filter(None, (getattr(e, "context", None), getattr(e, "problem", None)))) or str(e)
        raise LaserError(f"{where}: invalid YAML: {detail}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise LaserError(f"{source}: the config must be a mapping of keys to values, got {kind_of(data)}")
    lines: dict[str, int] = {}
    _record_lines(node, "", lines, source)
    return data, lines


def _record_lines(node: yaml.Node | None, prefix: str, lines: dict[str, int], source: str) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise LaserError(f"{source}:{line}: duplicate key '{prefix}{key}' (first set on line {seen[key]})")
        seen[key] = lines[prefix + key] = line
        _record_lines(value_node, f"{prefix}{key}.", lines, source)


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list {dump_yaml(value)}" if len(repr(value)) < 80 else "a list"
    name = {int: "integer", float: "number", str: "string"}.get(type(value), type(value).__name__)
    return f"{name} {value!r}"
