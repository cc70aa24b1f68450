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


# ----------------------------------------------------------------------------- hostile names
@pytest.fixture
def canary_package(tmp_path, monkeypatch):
    """An importable package that records being imported and its ``boom`` being called."""
    package = f"dk_canary_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    marker = tmp_path / "imported"
    called = tmp_path / "called"
    (tmp_path / package / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        f"def boom(*args, **kwargs):\n    open({str(called)!r}, 'w').close()\n"
        "class Boom:\n    def __init__(self, *args, **kwargs):\n"
        f"        open({str(called)!r}, 'w').close()\n"
    )
    (tmp_path / package / "registry.py").write_text("")  # mmengine tries <scope>.registry first
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package, marker, called
    for name in [m for m in sys.modules if m.startswith(package)]:
        del sys.modules[name]


def test_mmengine_get_imports_dotted_names_which_is_why_build_never_calls_it(canary_package):
    package, marker, called = canary_package
    assert Registry(f"probe_{uuid.uuid4().hex[:6]}").get(f"{package}.boom") is not None
    assert marker.exists()  # the behaviour defectkit must not inherit


@pytest.mark.parametrize("registry_name", ["stages", "heads", "datasets", "transforms", "metrics"])
@pytest.mark.parametrize("suffix", ["boom", "Boom", "registry", ""])
def test_dotted_and_module_names_are_refused_without_importing(canary_package, registry_name, suffix):
    from defectkit.registry import ALL_REGISTRIES

    package, marker, called = canary_package
    name = f"{package}.{suffix}" if suffix else package
    with pytest.raises(ConfigError, match="never imported" if "." in name else "unknown"):
        build(ALL_REGISTRIES[registry_name], dict(type=name))
    assert not marker.exists() and not called.exists()
    assert package not in sys.modules


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "subprocess.Popen", "defectkit.stages.mask_policy.MaskPolicy",
                                  "defectkit.MaskPolicy", ".MaskPolicy", "MaskPolicy.", "os:system"])
def test_module_paths_are_refused_even_for_real_objects(name):
    with pytest.raises(ConfigError, match="unknown stage type"):
        build(STAGES, dict(type=name, command="true"))


def test_unregistered_class_object_is_refused_registered_one_accepted(scratch_registry):
    _register(scratch_registry, "Widget", _Widget)
    assert isinstance(build(scratch_registry, dict(type=_Widget)), _Widget)
    with pytest.raises(ConfigError, match="unknown"):
        build(scratch_registry, dict(type=dict))


def test_plugin_child_registry_names_are_found_by_scope():
    scope = f"dkplugin_{uuid.uuid4().hex[:6]}"
    child = Registry("stage", parent=STAGES, scope=scope)
    try:
        _register(child, "Widget", _Widget)
        assert isinstance(build(STAGES, dict(type=f"{scope}.Widget", size=3)), _Widget)
        assert f"{scope}.Widget" in registered_names(STAGES)
        with pytest.raises(ConfigError, match="unknown"):
            build(STAGES, dict(type=f"{scope}.Missing"))
    finally:
        STAGES._children.pop(scope, None)
