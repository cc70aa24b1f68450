"""Dataset readers (one module per format), splits, transforms and built-in data."""
