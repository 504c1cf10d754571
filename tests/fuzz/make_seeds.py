"""Seed corpus for tests/fuzz/fuzz_bundle.cpp, made with the spaedge toolchain.

A deliberately tiny base (ResNet, BasicBlock x [1, 1], widths 4-8, CIFAR stem,
one input channel) and a few task bundles on it: SPLoRA pruned to about half
the channels, SPLoRA unpruned, a fine-tuned (dense weight_delta) pruned
one, a SPLoPA one pruned in blocks (block coefficients, one shared
prototype set, the stem's dense fallback), a pruned Pear one (adapters
shared in base coordinates by convs keeping different channels), a pruned sparse SPLoRA
(sparse factors, values + U8 position bitmasks) and a pruned sparse SPPaRA
(a sparse_delta, values + bitmask). Then edits of their metadata and
of the base's graph, each written with a right content hash (the format
hashes the metadata, so an edit is a different bundle, not a stale one):
what loads (another stride, another input size, a nested info) and what the validation refuses (a graph out of order,
repeated or empty labels, std 0, oversized inputs).
Everything is seeded: the files are the same on every run.

    python tests/fuzz/make_seeds.py [OUT_DIR]      # default tests/fuzz/seeds

Writes base.safetensors (the fuzzer's fixed base and itself a seed),
task_*.safetensors, base_*.safetensors and task_meta_*.safetensors; and,
next to OUT_DIR, regressions/ (inputs that once found a bug, README.md).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from spaedge.adapters import adapt, get_method, splopa
from spaedge.adapters.sparse_masks import sparsify
from spaedge.adapters.splopa import share_prototypes
from spaedge.models.resnet import BasicBlock, ResNet
from spaedge.pack.bundle import TaskSpec, write_base, write_task
from spaedge.pack.format import content_hash, read_bundle, write_bundle
from spaedge.pruning.prune import prune_to_density

INPUT = (1, 8, 8)


def tiny_base() -> ResNet:
    torch.manual_seed(0)
    return ResNet(
        BasicBlock,
        (1, 1),
        num_classes=3,
        in_channels=1,
        widths=(4, 8),
        stem="cifar",
        arch="fuzz-tiny",
    )


def task(method: str, density: float, rank: int, seed: int) -> ResNet:
    model = tiny_base()
    torch.manual_seed(seed)
    model.replace_head(3)
    block = get_method(method).prune_block
    if (
        method == "splopa"
    ):  # the fuzz base is 4-8 channels wide: 4x4 blocks, so its convs are blocked
        block = 4
        with mock.patch.object(splopa, "BLOCK", block):
            model = adapt(model, method, rank=rank)
    else:
        model = adapt(model, method, rank=rank)
    with torch.no_grad():  # non-trivial adapter factors, BN statistics and biases
        for _name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    if (
        method == "splopa"
    ):  # prototypes shared by every blocked conv, channels pruned in whole blocks
        share_prototypes(model, "model")
    if density < 1.0:
        prune_to_density(model, torch.zeros(1, *INPUT), density, step_fraction=0.25, block=block)
    return model


def sparse_task(seed: int, method: str = "sparse") -> ResNet:
    """SparseAdapter on SPLoRA (rank 2, 60% of the factors' entries masked), pruned:
    lora_rank and lora_{a,b}_values/_mask instead of dense factors; or (method
    ``sparse-sppara``) on SPPaRA: sparse_delta_values/_mask."""
    model = task(method, 1.0, 2, seed)
    sparsify(model, "magnitude", 0.4)
    prune_to_density(model, torch.zeros(1, *INPUT), 0.5, step_fraction=0.25)
    return model


def edited(src: Path, dst: Path, meta_edit=None, tensor_edit=None) -> None:
    """`src` with its metadata and/or tensors edited, written with a right hash."""
    tensors, meta = read_bundle(src)
    tensors = {k: v.copy() for k, v in tensors.items()}
    meta = {k: v for k, v in meta.items() if k not in ("content_hash", "version")}
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors, meta)
    write_bundle(dst, tensors, meta)


def graph_edit(fn):
    def edit(meta):
        g = json.loads(meta["graph"])
        fn(g)
        meta["graph"] = json.dumps(g)

    return edit


def input_edit(**fields):
    def edit(meta):
        meta["input"] = json.dumps({**json.loads(meta["input"]), **fields})

    return edit


def pear_task(seed: int) -> ResNet:
    """Pear, channels pruned to about half: the two lowest-scored adapters pruned and
    each shared with the kept conv of its base (O, I) (layer1's two convs; layer2's
    first conv and its downsampling conv), stored once in base coordinates."""
    from spaedge.adapters.pear import apply_pear

    model = task("pear", 0.5, 2, seed)
    names = [n for n, m in model.named_modules() if hasattr(m, "pear_source")]
    low = {"layer1.0.conv2", "layer2.0.downsample.0"}
    scores = {n: (0.1 if n in low else 1.0 + i) for i, n in enumerate(names)}
    rep = apply_pear(model, None, prune=len(low) / len(names), scores=scores)
    if rep["shared"] != len(low):
        raise RuntimeError(f"the Pear seed shares {rep['shared']} adapters, not {len(low)}")
    return model


def unaligned(src: Path, dst: Path) -> None:
    """`src` with its tensors laid out U8 first, so each F32/I32 tensor after
    an odd-length mask starts at an odd offset (the writer never does this;
    readers must copy or read unaligned: docs/format.md)."""
    tensors, meta = read_bundle(src)
    meta = {k: v for k, v in meta.items() if k != "content_hash"}
    order = sorted(tensors, key=lambda k: (tensors[k].dtype != np.uint8, k))
    table, data, pos = {}, b"", 0
    for k in order:
        a = np.ascontiguousarray(tensors[k])
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        dtype = {"float32": "F32", "int32": "I32", "uint8": "U8"}[a.dtype.name]
        table[k] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [pos, pos + len(raw)]}
        data, pos = data + raw, pos + len(raw)
    meta["content_hash"] = content_hash(meta, table, data)
    header = json.dumps({"__metadata__": meta, **table}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    dst.write_bytes(struct.pack("<Q", len(header)) + header + data)


def regressions(seeds: Path, out: Path) -> None:
    """Inputs that once found a bug (tests/fuzz/regressions/README.md)."""
    out.mkdir(parents=True, exist_ok=True)
    edited(
        seeds / "task_splora_pruned.safetensors",
        out / "task_arena_over_limit.safetensors",
        input_edit(height=4096, width=4096),
    )
    unaligned(seeds / "task_sparse_pruned.safetensors", out / "task_unaligned_tensors.safetensors")


def int8_seeds(out: Path, spec: TaskSpec) -> None:
    """An int8 base (docs/int8.md) and an int8 SPLoRA task on it, calibrated
    on random images: the harness runs int8 tasks on the int8 base
    (SPAEDGE_FUZZ_BASE_INT8), so mutations reach the int8 reader, the
    switch-time requantization and the u8 executor."""
    from spaedge.pack.calibrate import int8_task
    from spaedge.pack.quantize import int8_base_bundle

    h8 = write_bundle(
        out / "base_int8.safetensors", *int8_base_bundle(*read_bundle(out / "base.safetensors"))
    )
    torch.manual_seed(21)
    images = torch.randn(16, *INPUT)
    model = task("splora", 0.5, 2, seed=21)
    write_bundle(out / "task_int8_splora_pruned.safetensors", *int8_task(model, spec, h8, images))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    h = write_base(tiny_base(), out / "base.safetensors")
    spec = TaskSpec("fuzz", ["a", "b", "c"], INPUT, [0.5], [0.25])
    for name, method, density, rank in [
        ("splora_pruned", "splora", 0.5, 2),
        ("splora_full", "splora", 1.0, 1),
        ("finetune_pruned", "finetune", 0.6, 1),
        ("splopa_pruned", "splopa", 0.6, 2),
    ]:
        write_task(
            task(method, density, rank, seed=len(name)), spec, h, out / f"task_{name}.safetensors"
        )
    write_task(sparse_task(seed=13), spec, h, out / "task_sparse_pruned.safetensors")
    write_task(pear_task(seed=15), spec, h, out / "task_pear_pruned.safetensors")
    write_task(
        sparse_task(seed=14, method="sparse-sppara"),
        spec,
        h,
        out / "task_sparse_sppara_pruned.safetensors",
    )
    base, pruned = out / "base.safetensors", out / "task_splora_pruned.safetensors"

    def set_stride(g):
        g["nodes"][0]["stride"] = 2

    def out_of_order(g):
        g["nodes"][0], g["nodes"][1] = g["nodes"][1], g["nodes"][0]

    def set_groups(g):
        g["nodes"][0]["groups"] = 2

    # Base graph edits: another stride loads (another base); the others are refused.
    edited(base, out / "base_stride2.safetensors", graph_edit(set_stride))
    edited(base, out / "base_graph_order.safetensors", graph_edit(out_of_order))
    edited(base, out / "base_graph_groups.safetensors", graph_edit(set_groups))
    edited(
        base,
        out / "base_five_channels.safetensors",
        graph_edit(lambda g: g.update(input_channels=5)),
    )
    # Task metadata edits that load...
    edited(
        pruned,
        out / "task_meta_input16.safetensors",
        input_edit(height=16, width=12, mean=[0.1], std=[3.0]),
    )
    edited(
        pruned,
        out / "task_meta_info.safetensors",
        lambda m: m.update(
            info=json.dumps(
                {"rank": 2, "nested": {"l\u00e9": [1, 2.5, None, True]}, "s": "\u2603"}
            ),
            labels=json.dumps(["caf\u00e9", "\u6f22", "c\\d"]),
        ),
    )
    # ... and that are refused.
    edited(
        pruned,
        out / "task_meta_labels_dup.safetensors",
        lambda m: m.update(labels=json.dumps(["a", "c", "c"])),
    )
    edited(
        pruned,
        out / "task_meta_labels_empty.safetensors",
        lambda m: m.update(labels=json.dumps(["a", "", "c"])),
    )
    edited(pruned, out / "task_meta_std_zero.safetensors", input_edit(std=[0.0]))
    edited(pruned, out / "task_meta_input_huge.safetensors", input_edit(height=8192, width=8192))
    edited(pruned, out / "task_meta_info_list.safetensors", lambda m: m.update(info="[1, 2]"))
    # SPLoPA: a conv's coefficients without its entry in splopa_sets (refused).
    edited(
        out / "task_splopa_pruned.safetensors",
        out / "task_meta_splopa_unmapped.safetensors",
        lambda m: m.update(
            splopa_sets=json.dumps(dict(list(json.loads(m["splopa_sets"]).items())[1:]))
        ),
    )
    int8_seeds(out, spec)
    regressions(out, out.parent / "regressions")
    for p in sorted(
        [*out.glob("*.safetensors"), *(out.parent / "regressions").glob("*.safetensors")]
    ):
        print(f"{p}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "seeds")
