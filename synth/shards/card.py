"""The dataset card (README.md) of a synthesized directory, in the Hugging Face dataset-card layout.

Written next to manifest.json at the end of every synthesis run; its content depends only on the set (manifest
without timestamps, shard labels and logits), so a finished rerun leaves the file untouched. It shows the set's
preview.png (synth.shards.pictures, written beside it) by a relative link. Exports copy both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import h5py
import numpy as np

from synth.shards import format as shard_io
from synth.shards.manifest import read_manifest
from synth.shards.pictures import PREVIEW, PREVIEW_CLASSES, PREVIEW_PER_CLASS, replace_own_file

CARD = "README.md"
TERM_TEXT = {  # loss weights (synth.config.LossWeights) -> the term in a sentence, in the objective's order
    "ce": "cross-entropy to the target class",
    "bn": "BN-statistics matching",
    "tv": "total-variation",
    "l2": "L2",
    "ep": "intra-divergence",
    "triplet": "triplet",
    "adi": "competition",
}
MARKER = "<!-- dataset card written by dfkd from manifest.json and the shards; it is rewritten when they change -->"


def _stats(root: Path) -> dict[str, Any]:
    """Counts per class, resolution, class names and (with stored logits) teacher agreement, read shard by shard."""
    counts: dict[int, int] = {}
    hits = with_logits = 0
    resolution, names, num_classes = None, None, None
    for path in shard_io.list_shards(root):
        try:
            with h5py.File(path, "r") as f:
                labels = f["labels"][:]
                resolution = int(f.attrs["resolution"])
                num_classes = int(f.attrs["num_classes"])
                if names is None and "class_names" in f:
                    names = [s.decode() if isinstance(s, bytes) else s for s in f["class_names"][:]]
                if "teacher_logits" in f:
                    hits += int((f["teacher_logits"][:].argmax(1) == labels).sum())
                    with_logits += len(labels)
        except Exception:  # noqa: BLE001 - a damaged shard is reported by verify, not by the card
            continue
        for c, n in zip(*np.unique(labels, return_counts=True)):
            counts[int(c)] = counts.get(int(c), 0) + int(n)
    return {
        "counts": dict(sorted(counts.items())),
        "resolution": resolution,
        "class_names": names,
        "num_classes": num_classes,
        "fidelity": hits / with_logits if with_logits else None,
        "images": sum(counts.values()),
    }


def _size_category(n: int) -> str:
    """The Hugging Face size bucket of a set of `n` images."""
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if n < limit:
            return name
    return "n>10M"


def render(root: str | Path, manifest: Optional[dict] = None) -> str:
    """The card text of a shard directory (from its manifest, when given or present, and its shards)."""
    root = Path(root)
    manifest = manifest if manifest is not None else (read_manifest(root) or {})
    stats = _stats(root)
    teacher = manifest.get("teacher") or {}
    config = manifest.get("config") or {}
    if not teacher and shard_io.list_shards(root):
        with h5py.File(shard_io.list_shards(root)[0], "r") as f:
            teacher, config = json.loads(f.attrs["teacher"]), json.loads(f.attrs["config"])
    spec = teacher.get("spec", "unknown")
    name = root.resolve().name
    lines = (
        _header(name, spec, stats, config, teacher)
        + _preview()
        + _teacher_and_config(spec, teacher, config, stats)
        + _counts(root, manifest, stats)
        + _fidelity_and_diversity(manifest, stats)
        + _format(manifest)
        + _how_to_load()
        + _licence(spec)
    )
    return "\n".join(lines)


def _header(name: str, spec: str, stats: dict[str, Any], config: dict, teacher: dict) -> list[str]:
    """The Hugging Face metadata block, the title and what the set is."""
    return [
        "---",
        "license: other",
        "license_name: teacher-license",
        "pretty_name: " + json.dumps(f"dfkd synthesized set {name}"),
        "task_categories:",
        "- image-classification",
        "tags:",
        "- synthetic",
        "- data-free-knowledge-distillation",
        "- knowledge-distillation",
        "- deepinversion",
        "- dfkd",
        "size_categories:",
        f"- {_size_category(stats['images'])}",
        "---",
        "",
        MARKER,
        "",
        f"# {name}: images synthesized from `{spec}`",
        "",
        "## What it is",
        "",
        f"{stats['images']} labelled {stats['resolution']}x{stats['resolution']} {describe_pixels(config, teacher)} "
        f"of {len(stats['counts'])} of the teacher's {stats['num_classes']} classes, synthesized by dfkd from the "
        f"teacher alone, without its training data: {describe_method(config)}. Each image's label is the class it "
        "was optimised for; the teacher's logits are stored with it when the synthesis kept them. Use it to distil "
        "students from the teacher (data-free knowledge distillation).",
        "",
    ]


def describe_pixels(config: dict, teacher: dict) -> str:
    """What the stored pixels are: RGB, or grayscale stored as three equal channels (a grayscale teacher, one that
    reads one input channel)."""
    if teacher.get("input_channels") == 1:
        return "grayscale images (stored as 3 equal RGB channels, R = G = B; the teacher reads one channel)"
    if config.get("teacher_grayscale") or teacher.get("grayscale"):
        return "grayscale images (stored as 3 equal RGB channels, R = G = B)"
    return "RGB images"


def describe_method(config: dict) -> str:
    """How the set was synthesized, from its recorded config: the resolution stages and the loss terms that were
    on (weight > 0; the competition only with a student); the weights themselves are in the config below."""
    schedule, losses = config.get("schedule") or {}, config.get("losses") or {}
    stages = [
        f"{i} iterations at {r} px" for r, i in zip(schedule.get("resolutions", ()), schedule.get("iterations", ()))
    ]
    method = ("multi-resolution " if len(stages) > 1 else "") + "DeepInversion"
    method += f" ({', then '.join(stages)})" if stages else ""
    method = describe_generator(config) if config.get("engine") == "generator" else method
    lowres = schedule.get("lowres", 1)
    method += (
        f", each image optimised at 1/{lowres} of the resolution and shown to the teacher upsampled,"
        if lowres != 1
        else ""
    )
    on = [name for name in TERM_TEXT if _on(losses.get(name))]
    terms = [TERM_TEXT[name] for name in on if name in ("ce", "bn")]
    for names, before, one, several in (
        (("tv", "l2"), "the ", " prior", " priors"),
        (("ep", "triplet"), "DF-DearKD's ", " loss", " losses"),
    ):
        group = [TERM_TEXT[name] for name in on if name in names]
        if group:
            terms.append(before + " and ".join(group) + (several if len(group) > 1 else one))
    student = config.get("student")
    if "adi" in on and isinstance(student, dict):
        terms.append(f"Adaptive DeepInversion's competition with the student `{student.get('file', 'unknown')}`")
    return f"{method} minimising {_and(terms)}" if terms else method.rstrip(",")


def describe_generator(config: dict) -> str:
    """The generator engine in a few words: steps per batch, meta-learned or fixed start, resolution."""
    generator, resolution = (
        config.get("generator") or {},
        ((config.get("schedule") or {}).get("resolutions") or [0])[-1],
    )
    start = (
        f"a meta-learned initialisation (Reptile, meta step {generator.get('meta_lr')}, the first "
        f"{generator.get('warmup_units')} unit(s) of each of {generator.get('chains')} chain(s) taking "
        f"{generator.get('warmup_steps')} steps)"
        if generator.get("meta")
        else "one seeded initialisation"
    )
    noise = f" (its noise learned too, Adam lr {generator['noise_lr']})" if generator.get("noise_lr") else ""
    return (
        f"a class-conditional generator (Fast-DFKD) adapted to each batch in {generator.get('steps')} Adam steps{noise} "
        f"from {start}, images at {resolution} px,"
    )


def _and(items: list[str]) -> str:
    """Items joined as in a sentence: a, b and c."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _on(weight: Any) -> bool:
    """A loss weight that switches its term on."""
    return isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0


def _preview() -> list[str]:
    """The preview grid, by a relative link (Hugging Face and Markdown viewers show it)."""
    return [
        "## Preview",
        "",
        f"![{PREVIEW_PER_CLASS} images of each of up to {PREVIEW_CLASSES} classes, one row per class]({PREVIEW})",
        "",
    ]


def without_preview(text: str) -> str:
    """A card's text without its preview section (for a copy that does not carry preview.png)."""
    return text.replace("\n".join(_preview()) + "\n", "")


def _teacher_and_config(spec: str, teacher: dict, config: dict, stats: dict[str, Any]) -> list[str]:
    """The teacher (spec, weights sha256, classes, normalisation) and the synthesis config."""
    return [
        "## Teacher",
        "",
        f"- spec: `{spec}`",
        f"- weights sha256: `{teacher.get('weights_sha256', 'unknown')}`",
        f"- classes: {stats['num_classes']}, input size {teacher.get('input_size', 'unknown')}, "
        f"mean {teacher.get('mean')}, std {teacher.get('std')}",
        "",
        "## Synthesis config",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```",
        "",
    ]


def _counts(root: Path, manifest: dict, stats: dict[str, Any]) -> list[str]:
    """Images per class (with class names when known) and the shard count."""
    names = stats["class_names"]
    lines = ["## Counts per class", "", "| class | name | images |", "|---:|---|---:|"]
    lines += [f"| {c} | {names[c] if names and c < len(names) else ''} | {n} |" for c, n in stats["counts"].items()]
    complete = manifest.get("complete")
    return lines + [
        "",
        f"Shards: {len(manifest.get('shards', [])) or len(shard_io.list_shards(root))}"
        + (f" of {manifest['num_shards']}" if "num_shards" in manifest else "")
        + ("" if complete is None else f"; complete: {str(bool(complete)).lower()}")
        + ".",
        "",
    ]


def _fidelity_and_diversity(manifest: dict, stats: dict[str, Any]) -> list[str]:
    """Teacher fidelity of the stored logits and LPIPS diversity, or how to measure them."""
    lines = ["## Fidelity and diversity", ""]
    if stats["fidelity"] is not None:
        lines.append(f"- teacher fidelity (top-1 of the stored logits equals the label): {stats['fidelity']:.4f}")
    else:
        lines.append("- teacher fidelity: not stored (logits off); measure it with `dfkd evaluate fidelity DIR`")
    diversity = manifest.get("diversity")
    lines.append(
        f"- LPIPS diversity: {diversity}"
        if diversity is not None
        else "- LPIPS diversity: not measured; `dfkd evaluate diversity DIR` measures it"
    )
    return lines + [""]


def _format(manifest: dict) -> list[str]:
    """The shard format in brief."""
    return [
        "## Format",
        "",
        f"HDF5 shards, format `{shard_io.FORMAT}` version {manifest.get('format_version', shard_io.FORMAT_VERSION)} "
        "(`shard-XXXXXX.h5`, indexed by `manifest.json`). Each shard holds `images` (uint8, N x H x W x 3), `labels` "
        "(int64), `sample_ids` (int64), optionally `teacher_logits` (float16, N x classes) and `class_names`; its "
        "attributes hold the resolution, normalisation mean/std, teacher, config and a sha256 `digest` of the "
        "content (`dfkd inspect DIR` verifies it).",
        "",
    ]


def _how_to_load() -> list[str]:
    """Three ways to load the set: plain h5py, dfkd's ShardDataset, a Hugging Face export."""
    return [
        "## How to load it",
        "",
        "Plain h5py:",
        "",
        "```python",
        "import glob, h5py",
        "for path in sorted(glob.glob('DIR/shard-*.h5')):",
        "    with h5py.File(path, 'r') as f:",
        "        images, labels = f['images'][:], f['labels'][:]  # uint8 NHWC, int64",
        "        logits = f['teacher_logits'][:] if 'teacher_logits' in f else None",
        "```",
        "",
        "With dfkd (a lazy PyTorch dataset; several directories of the same teacher combine):",
        "",
        "```python",
        "from synth.shards.format import ShardDataset",
        "dataset = ShardDataset('DIR', return_logits=True)  # (uint8 CHW tensor, label, float32 logits)",
        "```",
        "",
        'As a Hugging Face dataset, after `dfkd export DIR --to hf OUT` (needs `pip install "dfkd[hf]"`):',
        "",
        "```python",
        "import datasets",
        "dataset = datasets.load_dataset('OUT', split='train')  # features: image, label, sample_id, logits",
        "```",
        "",
        "`dfkd export DIR --to webdataset OUT` and `--to imagefolder OUT` write tar shards and PNG class folders.",
        "",
    ]


def _licence(spec: str) -> list[str]:
    """The teacher's licence terms apply to the set."""
    return [
        "## Licence",
        "",
        f"These images were synthesized from the teacher `{spec}` and encode what it learned: the licence terms "
        "of the teacher's weights (and any restrictions of the data it was trained on) apply to this set. "
        "dfkd itself is Apache-2.0; that does not relicense the teacher.",
        "",
    ]


def write_card(
    root: str | Path, manifest: Optional[dict] = None, message: Optional[Callable[[str], None]] = None
) -> bool:
    """Write ROOT/README.md atomically; True when written. An identical card is left untouched, and a README.md
    that dfkd did not write is never replaced (`message` says so)."""
    path = Path(root) / CARD
    return replace_own_file(
        path, render(root, manifest).encode(), _is_card, message, "the dataset card was not written"
    )


def _is_card(path: Path) -> bool:
    """A README.md that dfkd wrote (it carries the marker)."""
    return MARKER in path.read_text(errors="replace")
