"""Oxford Flowers-102 (Nilsback & Zisserman), from a local copy.

Directory (--data-dir DIR, else $SPAEDGE_DATA/flowers102):
    jpg/image_00001.jpg ... image_08189.jpg
    imagelabels.mat   key 'labels': 1-based class of every image
    setid.mat         keys 'trnid', 'valid', 'tstid': 1-based image ids
Download from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/
(102flowers.tgz, imagelabels.mat, setid.mat) and unpack the tgz there.

Official split (train 1020 / val 1020 / test 6149). Images are decoded lazily
with PIL, resized so the shorter side is input/0.875, centre-cropped to the
input size (default 3 x 224 x 224) and normalised with ImageNet mean/std.
`split("train", augment=True)` adds a random horizontal flip.
"""

from __future__ import annotations

import os

import numpy as np

from .core import (
    IMAGENET_GRAY_MEAN,
    IMAGENET_GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetNotFound,
    ImageFileSource,
    Task,
    parse_input_size,
    search_dirs,
)

DEFAULT_SIZE = (3, 224, 224)
DIR_NAMES = ("flowers102", "flowers-102", "oxford-flowers-102")
URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"

# Class names in label order (label 1 first), as commonly published for the set.
LABELS = [
    s.strip()
    for s in """
pink primrose|hard-leaved pocket orchid|canterbury bells|sweet pea|english marigold|
tiger lily|moon orchid|bird of paradise|monkshood|globe thistle|snapdragon|colt's foot|
king protea|spear thistle|yellow iris|globe-flower|purple coneflower|peruvian lily|
balloon flower|giant white arum lily|fire lily|pincushion flower|fritillary|red ginger|
grape hyacinth|corn poppy|prince of wales feathers|stemless gentian|artichoke|
sweet william|carnation|garden phlox|love in the mist|mexican aster|alpine sea holly|
ruby-lipped cattleya|cape flower|great masterwort|siam tulip|lenten rose|barbeton daisy|
daffodil|sword lily|poinsettia|bolero deep blue|wallflower|marigold|buttercup|
oxeye daisy|common dandelion|petunia|wild pansy|primula|sunflower|pelargonium|
bishop of llandaff|gaura|geranium|orange dahlia|pink-yellow dahlia|cautleya spicata|
japanese anemone|black-eyed susan|silverbush|californian poppy|osteospermum|
spring crocus|bearded iris|windflower|tree poppy|gazania|azalea|water lily|rose|
thorn apple|morning glory|passion flower|lotus|toad lily|anthurium|frangipani|
clematis|hibiscus|columbine|desert-rose|tree mallow|magnolia|cyclamen|watercress|
canna lily|hippeastrum|bee balm|ball moss|foxglove|bougainvillea|camellia|mallow|
mexican petunia|bromelia|blanket flower|trumpet creeper|blackberry lily
""".replace("\n", "").split("|")
]
assert len(LABELS) == 102


def _is_flowers_dir(d: str) -> bool:
    return (
        os.path.isdir(os.path.join(d, "jpg"))
        and os.path.isfile(os.path.join(d, "imagelabels.mat"))
        and os.path.isfile(os.path.join(d, "setid.mat"))
    )


def find_flowers(data_dir=None) -> str:
    dirs = search_dirs(data_dir, DIR_NAMES)
    for d in dirs:
        if _is_flowers_dir(d):
            return d
    where = f"in {', '.join(dirs)}" if dirs else "(no --data-dir given and SPAEDGE_DATA is not set)"
    raise DatasetNotFound(
        f"Flowers-102 not found {where}: expected jpg/, imagelabels.mat, setid.mat. "
        f"Download 102flowers.tgz, imagelabels.mat and setid.mat from {URL}, unpack them "
        "into one directory and pass --data-dir DIR (or put them in $SPAEDGE_DATA/flowers102). "
        "The spaedge commands download it on first use unless --no-download is given "
        "(from Python: spaedge.tasks.fetch_data('flowers')).",
        dirs,
    )


def _mat_vector(path: str, key: str) -> np.ndarray:
    from scipy.io import loadmat

    m = loadmat(path)
    if key not in m:
        raise ValueError(
            f"{path}: no key {key!r} (has {sorted(k for k in m if not k.startswith('__'))})"
        )
    v = np.asarray(m[key]).reshape(-1)
    if v.size and not np.all(np.equal(np.mod(v, 1), 0)):
        raise ValueError(f"{path}: {key!r} must hold integers")
    return v.astype(np.int64)


def make_flowers(data_dir=None, input_size=None) -> Task:
    size = parse_input_size(input_size, DEFAULT_SIZE)
    root = find_flowers(data_dir)

    def load():
        lab_path = os.path.join(root, "imagelabels.mat")
        set_path = os.path.join(root, "setid.mat")
        labels = _mat_vector(lab_path, "labels")
        if labels.size == 0 or labels.min() < 1 or labels.max() > len(LABELS):
            raise ValueError(f"{lab_path}: labels must be 1..{len(LABELS)}")
        paths = [os.path.join(root, "jpg", f"image_{i:05d}.jpg") for i in range(1, len(labels) + 1)]
        source = ImageFileSource(paths, labels - 1, size)
        table = {}
        for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
            ids = _mat_vector(set_path, key)
            if ids.size and (ids.min() < 1 or ids.max() > len(labels)):
                raise ValueError(f"{set_path}: {key!r} has image ids outside 1..{len(labels)}")
            table[split] = (source, ids - 1)
        used = np.unique(np.concatenate([t[1] for t in table.values()]))
        missing = [paths[i] for i in used if not os.path.isfile(paths[i])]
        if missing:
            raise DatasetNotFound(
                f"Flowers-102 in {root} is incomplete: {len(missing)} images missing, e.g. "
                f"{missing[0]}. Unpack 102flowers.tgz from {URL} there.",
                [root],
            )
        return table

    mean, std = (
        (IMAGENET_MEAN, IMAGENET_STD) if size[0] == 3 else (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD)
    )
    return Task(
        "flowers",
        LABELS,
        size,
        mean,
        std,
        load,
        description="Oxford Flowers-102, official split (needs --data-dir)",
        flip_ok=True,
        in_memory=False,
        sources=[
            ("file", os.path.join(root, "imagelabels.mat")),
            ("file", os.path.join(root, "setid.mat")),
            ("tree", os.path.join(root, "jpg")),
        ],
    )
