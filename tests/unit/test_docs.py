"""The docs cannot drift: the config reference is generated from the registries, the README's
figures come from docs/results.md, and the docs site builds without broken links."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", REPO / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_up_to_date():
    expected = _generator().render()
    actual = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/reference.md is out of date: run python docs/gen_reference.py"


def test_config_reference_lists_every_registered_type_and_option():
    import inspect

    from defectkit.registry import ALL_REGISTRIES, registered_names

    text = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    for registry in ALL_REGISTRIES.values():
        for name in registered_names(registry):
            obj = registry.get(name)
            if not obj.__module__.startswith("defectkit."):
                continue
            section = text.split(f"### `{name}`\n", 1)[1].split("\n### ", 1)[0]
            target = obj.__init__ if inspect.isclass(obj) else obj
            for param in inspect.signature(target).parameters:
                if param not in ("self", "args", "kwargs"):
                    assert f"| `{param}` |" in section, f"{name}.{param} missing from docs/reference.md"


def test_readme_figures_are_the_ones_in_docs_results():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    results = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    figures = set(re.findall(r"\b0\.\d{3}\b", readme))
    assert figures, "the README quotes no results"
    missing = sorted(f for f in figures if f not in results)
    assert not missing, f"README figures not in docs/results.md: {missing}"


def test_readme_quickstart_is_two_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Quickstart", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) == 2


def test_docs_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install mkdocs-material mkdocstrings-python)")
    done = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
