"""Plugins: installed packages that declare an entry point in the group ``defectkit.plugins``.

A plugin's entry point names a module (or a callable taking no arguments); importing it registers
its datasets, stages, heads and metrics in defectkit's registries. Configs it ships can be found
with :func:`plugin_config_dirs`.

Example ``pyproject.toml`` of a plugin::

    [project.entry-points."defectkit.plugins"]
    weld_seams = "defectkit_weld_seams"
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field
from pathlib import Path

ENTRY_POINT_GROUP = "defectkit.plugins"
logger = logging.getLogger(__name__)


@dataclass
class PluginInfo:
    """What loading one plugin did."""

    name: str
    target: str
    distribution: str | None
    loaded: bool
    error: str | None = None
    config_dir: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)


_loaded: dict[str, PluginInfo] = {}


def load_plugins() -> list[PluginInfo]:
    """Import every installed plugin once; a broken plugin is reported, not fatal."""
    from defectkit.registry import ALL_REGISTRIES, registered_names

    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in _loaded:
            continue
        before = {kind: set(registered_names(reg)) for kind, reg in ALL_REGISTRIES.items()}
        dist = entry_point.dist.name if entry_point.dist is not None else None
        info = PluginInfo(entry_point.name, entry_point.value, dist, loaded=False)
        try:
            target = entry_point.load()
            if callable(target) and not isinstance(target, type(importlib)):
                target = target()
            module_file = getattr(target, "__file__", None)
            if module_file:
                configs = Path(module_file).parent / "configs"
                info.config_dir = str(configs) if configs.is_dir() else None
            info.loaded = True
        except Exception as exc:  # a plugin's bug must not stop the core from running
            info.error = f"{type(exc).__name__}: {exc}"
            logger.warning("plugin %s (%s) failed to load: %s", entry_point.name, entry_point.value, info.error)
        info.registered = {
            kind: sorted(set(registered_names(reg)) - before[kind])
            for kind, reg in ALL_REGISTRIES.items()
            if set(registered_names(reg)) - before[kind]
        }
        _loaded[entry_point.name] = info
    return list(_loaded.values())


def plugin_config_dirs() -> list[Path]:
    """Config folders shipped by loaded plugins."""
    return [Path(p.config_dir) for p in load_plugins() if p.config_dir]
