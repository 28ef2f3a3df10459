"""Lazy registries of named units (operators, sources, sinks), backed by entry points.

Built-ins are declared as entry points in ``pyproject.toml`` exactly like
plugins, so both are found the same way and nothing is imported until asked for.
A third-party package adds an operator by declaring, in its own metadata::

    [project.entry-points."dicomflow.operators"]
    my_step = "my_package.module:MyStep"
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from dicomflow.errors import ConfigError


@dataclass(frozen=True)
class Registry:
    """Names → loadable objects from one entry-point group."""

    group: str

    def names(self) -> list[str]:
        return sorted({ep.name for ep in entry_points(group=self.group)})

    def builtin_names(self) -> list[str]:
        """The names dicomflow itself registers."""
        return sorted(
            {ep.name for ep in entry_points(group=self.group) if ep.value.startswith("dicomflow.")}
        )

    def get(self, name: str) -> Any:
        matches = [ep for ep in entry_points(group=self.group) if ep.name == name]
        if not matches:
            known = ", ".join(self.names()) or "none"
            raise ConfigError(f"unknown {self.group} entry {name!r}; known: {known}")
        try:
            return matches[0].load()
        except ImportError as exc:
            raise ConfigError(
                f"{self.group} entry {name!r} needs an optional dependency: {exc.name}; "
                "install it with: pip install 'dicomflow[codecs,cloud]'"
            ) from exc


operators = Registry("dicomflow.operators")
sources = Registry("dicomflow.sources")
sinks = Registry("dicomflow.sinks")
