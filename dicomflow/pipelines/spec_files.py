"""Load and override a pipeline spec file (``dicomflow run`` and ``validate``).

``--set path=value`` edits the spec before validation: ``path`` is dotted with
list indices (``sinks.0.path``, ``limits.max_error_rate``) and ``value`` is read
as a YAML scalar. Every problem with a spec is a :class:`ConfigError` whose
message names the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dicomflow.errors import ConfigError
from dicomflow.schemas.spec import PipelineSpec


def load_spec(path: str, sets: Sequence[str] = ()) -> PipelineSpec:
    """Read ``path`` (YAML), apply ``sets``, validate."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the spec ({type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"the spec is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("the spec must be a YAML mapping")
    for item in sets:
        apply_set(raw, item)
    return validate_spec(raw)


def validate_spec(raw: dict[str, Any]) -> PipelineSpec:
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid spec: {problems}") from None


def apply_set(raw: dict[str, Any], item: str) -> None:
    """Apply one ``path=value`` override to the raw spec mapping."""
    path, sep, text = item.partition("=")
    if not sep or not path:
        raise ConfigError("each --set takes PATH=VALUE, e.g. sinks.0.path=/data/lake")
    value = yaml.safe_load(text) if text else ""
    keys = path.split(".")
    node: Any = raw
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {path}: no list item {key}")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ConfigError(f"--set {path}: {keys[depth - 1]} is not a mapping or a list")
