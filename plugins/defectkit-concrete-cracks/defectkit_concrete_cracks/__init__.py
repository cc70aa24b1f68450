"""defectkit plugin for cracks in concrete surfaces.

Importing this package (defectkit does it through the ``defectkit.plugins`` entry point) registers
the :class:`~defectkit_concrete_cracks.data.CrackFolder` and
:class:`~defectkit_concrete_cracks.data.SyntheticConcreteCracks` readers and the
:class:`~defectkit_concrete_cracks.shape_filter.CrackShapeFilter` stage. The reference config is
``configs/concrete_cracks.py`` beside this file.
"""

from __future__ import annotations

from pathlib import Path

from defectkit_concrete_cracks.data import CrackFolder, SyntheticConcreteCracks, write_synthetic_cracks
from defectkit_concrete_cracks.shape_filter import CrackShapeFilter, elongation

CONFIG = Path(__file__).parent / "configs" / "concrete_cracks.py"
"""The plugin's reference config."""

__all__ = ["CONFIG", "CrackFolder", "CrackShapeFilter", "SyntheticConcreteCracks", "elongation", "write_synthetic_cracks"]
