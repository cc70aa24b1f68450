# Cracks in concrete surfaces (defectkit-concrete-cracks plugin). An anomaly gate learns intact
# concrete from intact photos only; its anomaly map becomes a mask through the mask policy, and the
# crack-shape filter keeps only long, thin regions (pores, stains and aggregate are not cracks).
description = "concrete cracks: anomaly gate (PatchCore, EfficientNet-Lite0) + mask policy + crack-shape filter"
image_classes = ["normal", "defect"]
# The anomaly gate's map is its one class, "defect": here, crack pixels.
classes = ["defect"]

# --data-root DIR in the CrackFolder layout: intact/*.png, cracked/*.png, cracked_masks/*.png.
dataset = dict(type="CrackFolder")
# With no --data-root: generated concrete photos with cracks and exact masks.
builtin_dataset = dict(type="SyntheticConcreteCracks", n_intact=60, n_cracked=30, image_size=128)

pipeline = [
    dict(
        type="AnomalyGate",
        name="gate",
        model=dict(type="PatchCore", layers=(2, 3), coreset_size=2000),
        image_size=(128, 128),
    ),
    dict(type="MaskPolicy", name="mask_policy", rules=dict(defect=dict(threshold=0.5, open_px=1, close_px=3, min_area=12))),
    dict(type="CrackShapeFilter", name="crack_shape", min_elongation=4.0),
]

metrics = [dict(type="ImageClassification"), dict(type="PixelAUROC"), dict(type="SegmentationIoU")]
runtime = dict(seed=0, num_threads=None)
predict = dict(batch_size=16, overlays="all", decode_workers=2)
split = dict(ratios=(0.6, 0.2, 0.2), seed=0)
