"""How a task's images are cropped, with no torch: the task loaders
(``core.load_image``) and the device's ``spaedge run`` both decode through
``spaedge.images.read_image`` with the crop fraction given here, so an image is
preprocessed on a Raspberry Pi exactly as the task's data was in training.
"""

from __future__ import annotations

__all__ = [
    "CROP_FRACTION",
    "EXTENSIONS",
    "WHOLE_IMAGE_TASKS",
    "crop_fraction_for",
]

# Image files an image folder holds (lower-case suffixes).
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

# Decoded photos: resize so the shorter side (relative to the target aspect) is
# target / CROP_FRACTION, then centre-crop the target. 0.875 is the usual
# ImageNet evaluation transform (256 -> 224), which pretrained bases expect.
CROP_FRACTION = 0.875

# Tasks whose data are whole small images (their loaders pass crop_fraction=1.0):
# only the aspect ratio is cropped. A class subset (NAME:CLASSES) is its task's.
WHOLE_IMAGE_TASKS = frozenset(
    {"digits", "fashion_mnist", "fashion_mnist_base", "fashion_mnist_new", "cifar10"}
)


def crop_fraction_for(task_name: str) -> float:
    """The crop fraction of a task by name (a packed bundle records the name)."""
    head = str(task_name).partition(":")[0]
    return 1.0 if head in WHOLE_IMAGE_TASKS else CROP_FRACTION
