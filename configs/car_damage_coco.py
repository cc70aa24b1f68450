# Car body damage from COCO polygons with a single class: the car config with another reader.
# The Kaggle "coco car damage" photos (1024x1024, every photo damaged, no damage types) use one
# class, "damage", which the mask policy's default rule handles; the gate stays off (no
# undamaged photos).
_base_ = ["car_damage.py"]

description = "car body damage (one class, COCO polygons): U-Net (EfficientNet-Lite0) + mask policy"
classes = ["damage"]

# --data-root ../shared/data/car_damage_coco: train/COCO_train_annos.json + train/*.jpg
dataset = dict(_delete_=True, type="CocoSegmentation", ann_file="train/COCO_train_annos.json", classes=classes)

stage_overrides = dict(
    # Square photos; with about 50 training photos an epoch takes seconds, so train longer, on
    # whole photos, with the U-Net measured on this set (docs/results.md).
    segmenter=dict(model=dict(_delete_=True, type="Unet", decoder_channels=(128, 64, 32, 16, 8)),
                   image_size=(320, 320), train_crop=None, epochs=30),
    mask_policy=dict(rules=dict(_delete_=True, damage=dict(threshold=0.5, close_px=7, min_area=200))),
)
