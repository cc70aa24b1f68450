"""Bad config values: one line naming the key, the value and what is allowed; the CLI exits 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from defectkit.cli import EXIT_USAGE, main
from defectkit.config import load_config
from defectkit.errors import ConfigError
from defectkit.pipeline import Pipeline
from defectkit.registry import METRICS, STAGES, registered_names
from defectkit.validation import ConfigValueError, construct, matches, option_hints

REPO = Path(__file__).resolve().parents[2]
TEXTURE = str(REPO / "configs" / "texture_defect.py")
# Values a config can hold, of every kind; each option is given the first its hint rules out.
CANDIDATES = ["abc", 7, 0.5, True, ["x"], {"x": 1}]
WRAPPED = {"inner": dict(type="Segmenter", image_size=(64, 64))}


def _own(registry):
    return [n for n in registered_names(registry) if registry.get(n).__module__.startswith("defectkit.")]


def _wrong_values(obj_cls):
    """``{option: a value its hint does not allow}`` for every option with a checkable hint."""
    wrong = {}
    for key, hint in option_hints(obj_cls).items():
        if key == "name":
            continue
        bad = next((value for value in CANDIDATES if not matches(value, hint)), None)
        if bad is not None:
            wrong[key] = bad
    return wrong


@pytest.mark.parametrize("type_name", _own(STAGES))
def test_every_registered_stage_rejects_every_wrong_typed_option_in_one_line(type_name):
    wrong = _wrong_values(STAGES.get(type_name))
    assert wrong, f"{type_name} declares no typed option"
    base = WRAPPED if type_name in ("Tiling", "RoiCrop") else {}
    for key, value in wrong.items():
        with pytest.raises(ConfigError) as info:
            Pipeline.from_config([dict(type="Gamma"), dict(type=type_name, **{**base, key: value})])
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"pipeline.1.{key}={value!r} ({type_name}): expected "), message


@pytest.mark.parametrize("type_name", _own(METRICS))
def test_every_metric_rejects_wrong_typed_options(type_name):
    for key, value in _wrong_values(METRICS.get(type_name)).items():
        with pytest.raises(ConfigValueError, match=f"^{key}="):
            construct("metric", METRICS.get(type_name), {key: value})


def test_a_constructor_refusal_names_the_option():
    with pytest.raises(ConfigValueError) as info:
        Pipeline.from_config([dict(type="AnomalyGate", threshold_metric="best")])
    assert info.value.key == "pipeline.0.threshold_metric" and info.value.value == "best"
    assert "f1_macro" in str(info.value)


@pytest.mark.parametrize(
    ("option", "key"),
    [
        ("predict.batch_size=abc", "predict.batch_size='abc'"),
        ("predict.overlays=some", "predict.overlays='some'"),
        ("split.ratios=1", "split.ratios=1"),
        ("runtime.num_threads=many", "runtime.num_threads='many'"),
        ("classes=3", "classes=3"),
    ],
)
def test_top_level_sections_are_checked(option, key):
    name, value = option.split("=")
    with pytest.raises(ConfigValueError, match=f"^{key}: expected"):
        load_config(TEXTURE, {name: value if not value.isdigit() else int(value)})


def test_unknown_section_option_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid options: batch_size"):
        load_config(TEXTURE, {"predict.batchsize": 3})


@pytest.mark.parametrize(
    "option",
    ["pipeline.0.image_size=abc", "pipeline.0.batch_size=1.5", "pipeline.1.rules=3", "predict.decode_workers=two", "metrics.0.classes=3"],
)
def test_cli_exits_2_with_one_line_naming_the_key(option, tmp_path, capsys):
    code = main(["run", TEXTURE, "--work-dir", str(tmp_path / "wd"), "--cfg-options", option])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USAGE
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert option.split("=")[0] in err, err
    assert not (tmp_path / "wd" / "weights").exists()
