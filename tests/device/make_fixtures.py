"""What the device-side tests read, made on a workstation (torch) once:

    python tests/device/make_fixtures.py DIR

DIR/bundles/base.safetensors, DIR/bundles/digits.safetensors: a "digits" task
(1x28x28, 10 labels "0".."9") with random SPLoRA adapters on the built-in
`tiny` base, pruned to 50 % (no training: its outputs, not its accuracy, are
checked); DIR/test.npz: 64 normalised inputs X and labels y (the PyTorch
model's top-1, so the runtime scores 100 %); DIR/expected.npz: PyTorch's logits
for X and for DIR/images (logits_x, logits_images, names); DIR/images/<label>/
a few 8x8 gray PNGs (the digits task's own kind of image), each under the
label the model gives it; DIR/x.npy: X[:2]; DIR/digit.png, DIR/digit.pgm: what
the README's Raspberry Pi commands classify.

CI makes them on x86 and runs tests/device under qemu on aarch64 with
SPAEDGE_DEVICE_FIXTURES=DIR (no torch there); on x86, tests/device/conftest.py
makes them in a temporary directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def make(out: Path) -> Path:
    import torch
    from PIL import Image

    from spaedge.bench.synthetic import make_synthetic_task
    from spaedge.images import read_image
    from spaedge.pack.bundle import load_task_model
    from spaedge.pack.materialize import materialize
    from spaedge.tasks.image import crop_fraction_for

    out = Path(out)
    bundles = out / "bundles"
    t = make_synthetic_task(
        bundles,
        "digits",
        base="tiny",
        density=0.5,
        rank=4,
        classes=10,
        input_size=(1, 28, 28),
        labels=[str(i) for i in range(10)],
        mean=[0.3],
        std=[0.4],
        base_file="base.safetensors",
    )
    model, _, _ = load_task_model(t.base_path, t.task_path)
    plain = materialize(model).eval()

    g = np.random.default_rng(0)
    X = g.standard_normal((64, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        logits_x = plain(torch.from_numpy(X)).numpy()
    y = logits_x.argmax(1).astype(np.int64)
    np.savez(out / "test.npz", X=X, y=y)
    np.save(out / "x.npy", X[:2])

    # Gray 8x8 PNGs (the digits task's kind of image), each filed under the label the
    # PyTorch model gives it: the folder scores 100 %.
    pixels = [(g.random((8, 8)) * 255).astype(np.uint8) for _ in range(6)]
    scratch = out / "scratch.png"
    images = []
    for pix in pixels:
        Image.fromarray(pix, "L").save(scratch)
        x = read_image(scratch, (1, 28, 28), crop_fraction_for("digits"))
        images.append((x - np.float32(0.3)) / np.float32(0.4))
    scratch.unlink()
    with torch.no_grad():
        logits_images = plain(torch.from_numpy(np.stack(images))).numpy()
    names = []
    for k, (pix, row) in enumerate(zip(pixels, logits_images)):
        name = f"{int(row.argmax())}/img{k}.png"
        (out / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pix, "L").save(out / "images" / name)
        names.append(name)
    # What the README's Pi commands read: a PNG, a binary PGM of the task's size
    # (spaedge-run) and the stored test arrays.
    Image.fromarray(pixels[0], "L").save(out / "digit.png")
    pgm = (g.random((28, 28)) * 255).astype(np.uint8)
    (out / "digit.pgm").write_bytes(b"P5\n28 28\n255\n" + pgm.tobytes())
    np.savez(
        out / "expected.npz",
        logits_x=logits_x,
        logits_images=logits_images,
        names=np.asarray(names),
    )
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/device/make_fixtures.py DIR")
    print(f"device fixtures: {make(Path(sys.argv[1]))}")
