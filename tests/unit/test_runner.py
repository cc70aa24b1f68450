"""Runner helpers that do not need a trained pipeline."""

from pathlib import Path

import pytest

from defectkit.errors import ConfigError
from defectkit.runner import skipped_stage_seconds, split_stratum
from defectkit.sample import Record


def _damaged(name: str, category: str, ratio: float) -> Record:
    return Record(path=f"/data/{name}.jpg", label=1, category=category, meta={"damaged_area_ratio": ratio})


def test_label_stratum_is_the_default():
    stratum = split_stratum({}, [])
    assert stratum(_damaged("a", "dent", 0.5)) == "dent"


def test_damage_stratum_bins_the_area_ratio_by_terciles_of_the_data():
    records = [_damaged(f"r{i}", "dent", ratio) for i, ratio in enumerate([0.01, 0.02, 0.03, 0.1, 0.2, 0.3])]
    stratum = split_stratum({"stratum": "damage"}, records)
    assert [stratum(r) for r in records] == ["dent/small"] * 2 + ["dent/medium"] * 2 + ["dent/large"] * 2


def test_damage_stratum_uses_fixed_cuts_when_given():
    stratum = split_stratum({"stratum": "damage", "area_cuts": (0.5, 0.9)}, [])
    assert stratum(_damaged("a", "scratch", 0.3)) == "scratch/small"


def test_unknown_stratum_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="'label' or 'damage'"):
        split_stratum({"stratum": "colour"}, [])


def test_gate_savings_charge_each_skipping_stage_its_time_per_image():
    stages = {
        "gate": {"images": 100, "seconds": 1.0},
        "segmenter": {"images": 10, "seconds": 2.0},  # 0.2 s per image, skipped 90
        "mask_policy": {"images": 10, "seconds": 0.5},  # 0.05 s per image, skipped 90
    }
    assert skipped_stage_seconds(stages) == pytest.approx(90 * 0.2 + 90 * 0.05)


def test_no_savings_when_every_stage_saw_every_image():
    assert skipped_stage_seconds({"a": {"images": 5, "seconds": 1.0}, "b": {"images": 5, "seconds": 2.0}}) == 0.0


def test_a_reader_that_is_not_an_image_dataset_is_refused_in_one_line(tmp_path):
    from mmengine.config import Config

    from defectkit.registry import DATASETS
    from defectkit.runner import build_dataset

    @DATASETS.register_module(force=True)
    class ListOfPaths:  # records() only: no LAYOUT, problems or root for the runner and check-data
        def __init__(self, data_root: str) -> None:
            self.data_root = data_root

        def records(self) -> list[Record]:
            return []

    try:
        cfg = Config(dict(dataset=dict(type="ListOfPaths")))
        with pytest.raises(ConfigError, match=r"dataset.type=ListOfPaths: a data set reader must subclass .*ImageDataset"):
            build_dataset(cfg, "my_config.py", tmp_path, str(tmp_path))
    finally:
        DATASETS.module_dict.pop("ListOfPaths", None)


@pytest.mark.parametrize("keep", [True, False])
def test_the_runner_tunes_the_allocator_unless_the_config_opts_out(monkeypatch, tmp_path, keep):
    import defectkit.runner as runner_module
    from defectkit.config import load_config
    from defectkit.runner import Runner

    calls = []
    monkeypatch.setattr(runner_module, "keep_freed_memory", lambda: calls.append(True) or True)
    config = Path(__file__).resolve().parents[2] / "configs" / "texture_defect.py"
    cfg = load_config(config, {"runtime.keep_freed_memory": keep})
    Runner(cfg, str(config), work_dir=str(tmp_path))
    assert calls == ([True] if keep else [])
