"""The plugin's reader, generator and crack-shape filter, imported from its source folder."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import defectkit
import defectkit_concrete_cracks as plugin
from defectkit.errors import ConfigError, DataError
from defectkit.pipeline import Pipeline
from defectkit.registry import DATASETS, STAGES, build
from defectkit.sample import Instance, Record, Sample


def test_generated_set_reads_back_with_masks(tmp_path):
    root = plugin.write_synthetic_cracks(tmp_path, n_intact=3, n_cracked=2, image_size=64, seed=1)
    records = build(DATASETS, dict(type="CrackFolder", data_root=str(root))).records()
    assert [r.label for r in records] == [1, 1, 0, 0, 0]
    assert all(r.mask_path for r in records if r.label == 1)


def test_reader_skips_cracked_photos_without_a_mask_and_names_them(tmp_path):
    root = plugin.write_synthetic_cracks(tmp_path, n_intact=1, n_cracked=2, image_size=64)
    next((root / "cracked_masks").iterdir()).unlink()
    reader = plugin.CrackFolder(root)
    assert len(reader.records()) == 2
    assert len(reader.problems) == 1 and "without cracked_masks" in reader.problems[0]


def test_reader_names_the_layout_when_the_root_is_wrong(tmp_path):
    with pytest.raises(DataError, match="intact/<name>.png"):
        plugin.CrackFolder(tmp_path).records()


def test_shape_filter_keeps_cracks_and_drops_blobs_with_their_instances():
    masks = np.zeros((1, 40, 40), bool)
    masks[0, 5:7, 2:38] = True  # a crack: 36 x 2
    masks[0, 20:30, 20:30] = True  # a stain: 10 x 10
    crack = Instance("defect", 0.9, (2, 5, 38, 7), 72.0, [[2, 5], [37, 5], [37, 6], [2, 6]])
    stain = Instance("defect", 0.8, (20, 20, 30, 30), 100.0, [[20, 20], [29, 20], [29, 29], [20, 29]])
    sample = Sample(Record("x.png"), image=np.zeros((40, 40, 3), np.uint8), masks=masks, map_classes=["defect"], instances=[crack, stain])
    (result,) = build(STAGES, dict(type="CrackShapeFilter", min_elongation=4))([sample])
    assert result.masks["defect"].sum() == 72
    assert [i.score for i in result.instances] == [0.9]


def test_shape_filter_can_be_switched_off_and_rejects_bad_options():
    masks = np.ones((1, 8, 8), bool)
    sample = Sample(Record("x.png"), image=np.zeros((8, 8, 3), np.uint8), masks=masks, map_classes=["defect"])
    (result,) = defectkit.build_stage(dict(type="CrackShapeFilter", enabled=False))([sample])
    assert result.masks["defect"].all()
    with pytest.raises(ConfigError, match=r"pipeline\.0\.min_elongation='long'"):
        Pipeline.from_config([dict(type="CrackShapeFilter", min_elongation="long")])
    with pytest.raises(ConfigError, match="min_elongation"):
        Pipeline.from_config([dict(type="CrackShapeFilter", min_elongation=0.5)])


@pytest.mark.parametrize("module", ["defectkit_concrete_cracks.data", "defectkit_concrete_cracks.shape_filter"])
def test_docstring_examples_run(module):
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
