"""Networks inside stages: backbones with offline weights, anomaly models, classifiers, segmenters."""
