"""defectkit: pluggable visual-defect inspection pipelines."""

__version__ = "0.1.0"
