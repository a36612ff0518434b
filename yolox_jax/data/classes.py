"""Class-name lists: COCO's 80 (in YOLOX's contiguous order) and Pascal VOC's 20.

COCO category ids are not contiguous (1..90 with gaps); the model's class i is the i-th name here
and the i-th category of the annotation file sorted by id (`COCO_CATEGORY_IDS[i]`).
"""

from __future__ import annotations

from collections.abc import Sequence

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

# The official COCO ids of the 80 classes above (val2017 / train2017 `categories`, sorted).
COCO_CATEGORY_IDS: tuple[int, ...] = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
    *range(72, 83), *range(84, 91),
)


def class_names_for(
    config_names: Sequence[str], num_classes: int, data_format: str = "coco"
) -> tuple[str, ...]:
    """Names to draw/print for a model with `num_classes` outputs.

    The config's `data.class_names` win; an empty list means the dataset's standard names (COCO's
    80, or VOC's 20 when `data_format` is "voc") or, for another class count, generic
    "class_<i>" names so that drawing never indexes past the list.
    """
    names = tuple(str(n) for n in config_names)
    if names:
        if len(names) != num_classes:
            raise ValueError(
                f"config data.class_names has {len(names)} names but the model predicts "
                f"{num_classes} classes"
            )
        return names
    if data_format == "voc" and num_classes == len(VOC_CLASSES):
        return VOC_CLASSES
    if num_classes == len(COCO_CLASSES):
        return COCO_CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))
