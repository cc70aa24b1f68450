"""Building objects by name from the registries."""

from __future__ import annotations

import importlib
import sys
import uuid

import pytest
from mmengine.registry import Registry

from defectkit.errors import ConfigError
from defectkit.registry import STAGES, build, registered_names


@pytest.fixture
def scratch_registry():
    """A private registry so throwaway classes never leak into the real ones."""
    return Registry(f"thing_{uuid.uuid4().hex[:8]}")


def _register(registry, name, cls):
    registry.register_module(name=name)(cls)
    return cls


class _Widget:
    def __init__(self, size: int = 1, colour: str = "red") -> None:
        self.size = size
        self.colour = colour


def test_build_constructs_registered_class_with_config_arguments(scratch_registry):
    _register(scratch_registry, "Widget", _Widget)
    widget = build(scratch_registry, dict(type="Widget", size=7))
    assert isinstance(widget, _Widget)
    assert widget.size == 7
    assert widget.colour == "red"


def test_unknown_type_lists_valid_names_and_suggests_close_match(scratch_registry):
    _register(scratch_registry, "Widget", _Widget)
    _register(scratch_registry, "Gadget", type("Gadget", (), {}))
    with pytest.raises(ConfigError) as info:
        build(scratch_registry, dict(type="Widgit"))
    message = str(info.value)
    assert "'Widgit'" in message
    assert "Did you mean 'Widget'?" in message
    assert "Gadget, Widget" in message


def test_unknown_type_without_close_match_has_no_suggestion(scratch_registry):
    _register(scratch_registry, "Widget", _Widget)
    with pytest.raises(ConfigError) as info:
        build(scratch_registry, dict(type="Zzzzzzzz"))
    assert "Did you mean" not in str(info.value)
    assert "Widget" in str(info.value)


def test_unknown_constructor_option_lists_valid_options(scratch_registry):
    _register(scratch_registry, "Widget", _Widget)
    with pytest.raises(ConfigError) as info:
        build(scratch_registry, dict(type="Widget", sise=3))
    message = str(info.value)
    assert "'sise'" in message
    assert "valid options: size, colour" in message


def test_config_without_type_is_rejected(scratch_registry):
    with pytest.raises(ConfigError, match="'type'"):
        build(scratch_registry, dict(size=3))


def test_defaults_fill_only_options_the_config_leaves_unset(scratch_registry):
    _register(scratch_registry, "Widget", _Widget)
    widget = build(scratch_registry, dict(type="Widget", size=2), size=99, colour="blue")
    assert widget.size == 2
    assert widget.colour == "blue"


def test_build_does_not_mutate_the_config_dict(scratch_registry):
    _register(scratch_registry, "Widget", _Widget)
    cfg = dict(type="Widget", size=2)
    build(scratch_registry, cfg, colour="blue")
    assert cfg == dict(type="Widget", size=2)


def test_class_taking_var_keywords_accepts_any_option(scratch_registry):
    class Loose:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    _register(scratch_registry, "Loose", Loose)
    assert build(scratch_registry, dict(type="Loose", anything=1)).kwargs == {"anything": 1}


def test_registered_names_are_sorted(scratch_registry):
    for name in ["Zeta", "alpha", "Mid", "Beta"]:
        _register(scratch_registry, name, type(name, (), {}))
    assert registered_names(scratch_registry) == sorted(["Zeta", "alpha", "Mid", "Beta"])


def test_registered_names_import_every_module_of_the_location_package(tmp_path, monkeypatch):
    # mmengine imports only a location package itself; classes live in its modules.
    package = f"dk_location_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text(
        "from mmengine.registry import Registry\n"
        f"REGISTRY = Registry('widget', scope={package!r}, locations=[{package!r}])\n"
    )
    (tmp_path / package / "widgets.py").write_text(
        f"from {package} import REGISTRY\n"
        "@REGISTRY.register_module()\n"
        "class Sprocket:\n"
        "    def __init__(self, teeth=12):\n"
        "        self.teeth = teeth\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry = importlib.import_module(package).REGISTRY
        assert registered_names(registry) == ["Sprocket"]
        assert build(registry, dict(type="Sprocket", teeth=3)).teeth == 3
    finally:
        for name in [m for m in sys.modules if m.startswith(package)]:
            del sys.modules[name]


def test_registered_names_include_builtin_stages():
    assert "MaskPolicy" in registered_names(STAGES)


def test_builtin_stage_builds_by_name():
    stage = build(STAGES, dict(type="MaskPolicy", rules=dict(defect=dict(threshold=0.4))))
    assert stage.rule_for("defect").threshold == 0.4
