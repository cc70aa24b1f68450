"""Loading installed plugins through the ``defectkit.plugins`` entry-point group."""

from __future__ import annotations

import sys
import uuid

import pytest

from defectkit import plugins, registry
from defectkit.registry import STAGES, build


def _install_fake_distribution(root, dist_name, module_name, module_source, entry_name):
    package = root / module_name
    package.mkdir()
    (package / "__init__.py").write_text(module_source)
    info = root / f"{dist_name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[defectkit.plugins]\n{entry_name} = {module_name}\n")


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    """A folder on sys.path where fake plugins are installed; everything they register is removed after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_loaded", {})
    # Only the stage registry matters here; listing heads would import the heavy anomaly models.
    monkeypatch.setattr(registry, "ALL_REGISTRIES", {"stages": STAGES})
    before_modules = set(sys.modules)
    before_stages = set(STAGES.module_dict)
    yield tmp_path
    for name in set(sys.modules) - before_modules:
        if name.startswith("dk_test_plugin"):
            del sys.modules[name]
    for name in set(STAGES.module_dict) - before_stages:
        STAGES.module_dict.pop(name)


def test_installed_plugin_is_loaded_and_its_stage_is_buildable(plugin_site):
    stage_name = f"PluginStage{uuid.uuid4().hex[:8]}"
    source = (
        "from defectkit.registry import STAGES\n"
        "from defectkit.stages.base import Stage\n"
        f"@STAGES.register_module(name={stage_name!r})\n"
        "class PluginStage(Stage):\n"
        "    def __init__(self, factor=1, name=None):\n"
        "        super().__init__(name)\n"
        "        self.factor = factor\n"
        "    def predict(self, samples):\n"
        "        return samples\n"
    )
    _install_fake_distribution(plugin_site, "dk-test-plugin", "dk_test_plugin", source, "testplugin")
    infos = {info.name: info for info in plugins.load_plugins()}
    info = infos["testplugin"]
    assert info.loaded is True
    assert info.error is None
    assert info.target == "dk_test_plugin"
    assert info.distribution == "dk-test-plugin"
    assert info.registered.get("stages") == [stage_name]
    stage = build(STAGES, dict(type=stage_name, factor=3))
    assert stage.factor == 3


def test_plugins_are_imported_only_once(plugin_site):
    source = "import builtins\nbuiltins.dk_test_plugin_imports = getattr(builtins, 'dk_test_plugin_imports', 0) + 1\n"
    _install_fake_distribution(plugin_site, "dk-test-plugin", "dk_test_plugin", source, "testplugin")
    import builtins

    try:
        first = plugins.load_plugins()
        second = plugins.load_plugins()
        assert builtins.dk_test_plugin_imports == 1
        assert [p.name for p in first] == [p.name for p in second]
    finally:
        del builtins.dk_test_plugin_imports


def test_plugin_config_folder_is_found(plugin_site):
    _install_fake_distribution(plugin_site, "dk-test-plugin", "dk_test_plugin", "", "testplugin")
    (plugin_site / "dk_test_plugin" / "configs").mkdir()
    info = {p.name: p for p in plugins.load_plugins()}["testplugin"]
    assert info.config_dir == str(plugin_site / "dk_test_plugin" / "configs")
    assert plugin_site / "dk_test_plugin" / "configs" in plugins.plugin_config_dirs()


def test_plugin_raising_on_import_is_listed_as_failed_not_raised(plugin_site):
    source = "raise RuntimeError('plugin exploded')\n"
    _install_fake_distribution(plugin_site, "dk-test-plugin-broken", "dk_test_plugin_broken", source, "brokenplugin")
    infos = {info.name: info for info in plugins.load_plugins()}
    info = infos["brokenplugin"]
    assert info.loaded is False
    assert "RuntimeError" in info.error and "plugin exploded" in info.error
    assert info.registered == {}
