"""LPIPS diversity: per class, the mean LPIPS (AlexNet, v0.1, inputs in [-1, 1]) over pairs of its images."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from dfkd.evaluate.config import EvaluateConfig
from synth.common.errors import UserError
from synth.common.runtime import Progress, resolve_device
from synth.shards.format import ShardDataset
from synth.teachers.downloads import hub_cached_download
from synth.teachers.weights import read_state_dict

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"  # torchvision's IMAGENET1K_V1
ALEXNET_FILE = ALEXNET_URL.rsplit("/", 1)[1]
MIN_RESOLUTION = 64


def backbone_file(path: Optional[str | Path] = None) -> Path:
    """The AlexNet backbone: `path`, else the torch hub cache, else torchvision's download (failing fast offline)."""
    if path:
        if not Path(path).is_file():
            raise UserError(
                f"LPIPS backbone '{path}' does not exist; pass a torchvision AlexNet state_dict ({ALEXNET_FILE})"
            )
        return Path(path)
    return Path(hub_cached_download(ALEXNET_URL, "pass the torchvision AlexNet weights with --lpips-backbone FILE"))


def load_lpips(backbone: Optional[str | Path] = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """lpips.LPIPS (AlexNet, v0.1) whose AlexNet weights are the backbone file's `features.*`, in eval mode."""
    path = backbone_file(backbone)
    state = read_state_dict(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import lpips

        model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    own = model.net.state_dict()  # keys "sliceK.N.weight" hold torchvision's "features.N.weight"
    source = {name: "features." + name.split(".", 1)[1] for name in own}
    for name, key in source.items():
        if key not in state or state[key].shape != own[name].shape:
            raise UserError(
                f"'{path}' is not a torchvision AlexNet state_dict (no {key} of shape {tuple(own[name].shape)})"
            )
    model.net.load_state_dict({name: state[key] for name, key in source.items()})
    return model.eval().requires_grad_(False).to(device)


def unrank_pairs(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear pair index -> (i, j) with j < i, in the order (1,0), (2,0), (2,1), (3,0), ..."""
    k = np.asarray(k, dtype=np.int64)
    i = ((1 + np.sqrt(1 + 8 * k.astype(np.float64))) // 2).astype(np.int64)
    i -= i * (i - 1) // 2 > k
    i += (i + 1) * i // 2 <= k
    return i, k - i * (i - 1) // 2


def sample_pairs(n: int, pairs: Optional[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of n items when there are at most `pairs` (or `pairs` is None), else `pairs` distinct random ones."""
    total = n * (n - 1) // 2
    if pairs is None or total <= pairs:
        return unrank_pairs(np.arange(total))
    return unrank_pairs(np.sort(rng.choice(total, pairs, replace=False)))


def lpips_features(model: torch.nn.Module, images: torch.Tensor, size: int) -> list[torch.Tensor]:
    """LPIPS' unit-normalised AlexNet activations of uint8 (B, 3, H, W) images, upsampled (bilinear) to `size`."""
    from lpips import normalize_tensor

    x = images.float() / 127.5 - 1
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return [normalize_tensor(f) for f in model.net(model.scaling_layer(x))]


def lpips_from_features(model: torch.nn.Module, a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """LPIPS distance per row between two lists of `lpips_features` (what `model(x0, x1)` computes)."""
    return sum(lin((fa - fb) ** 2).mean((2, 3)) for lin, fa, fb in zip(model.lins, a, b)).flatten()


def measure_lpips_diversity(
    shards: str | Path, settings: Optional[EvaluateConfig] = None, progress: Optional[Progress] = None
) -> dict[str, Any]:
    """Per-class mean LPIPS over all pairs (or `pairs` seeded random ones), the mean over classes, the size used."""
    settings = settings or EvaluateConfig()
    pairs = None if settings.pairs == "all" else settings.pairs
    progress = progress or Progress()
    dataset = ShardDataset(shards)
    device = resolve_device(settings.device)
    backbone = backbone_file(settings.lpips_backbone)
    model = load_lpips(backbone, device)
    size = max(dataset.resolution, MIN_RESOLUTION)
    plans, skipped = _pair_plans(dataset, pairs, settings.seed, device)
    if not plans:
        raise UserError(f"no class in '{shards}' has two images; LPIPS diversity needs pairs")
    per_class, counts = {}, {}
    progress.start(sum(len(p[0]) for p in plans.values()))
    with torch.inference_mode():
        for c, (indices, first, second) in plans.items():
            features = _class_features(model, dataset, indices, size, settings.batch_size, device, progress)
            distances = _pair_distances(model, features, first, second, settings.batch_size)
            per_class[c], counts[c] = distances.mean().item(), len(first)
    progress.close()
    dataset.close()
    return _summary(dataset, per_class, counts, size, skipped, backbone)


PairPlan = tuple[np.ndarray, torch.Tensor, torch.Tensor]


def _pair_plans(
    dataset: ShardDataset, pairs: Optional[int], seed: int, device: torch.device
) -> tuple[dict[int, PairPlan], list[int]]:
    """Per class with at least one pair: the dataset indices of the images its pairs use, and each pair's first and
    second image as positions in those (on `device`); and the classes skipped for want of two images."""
    plans, skipped = {}, []
    for c in np.unique(dataset.labels).tolist():
        members = np.flatnonzero(dataset.labels == c)
        first, second = sample_pairs(len(members), pairs, np.random.default_rng([seed, c]))
        if not len(first):
            skipped.append(c)
            continue
        used, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
        inverse = torch.from_numpy(inverse).to(device)
        plans[c] = (members[used], inverse[: len(first)], inverse[len(first) :])
    return plans, skipped


def _class_features(
    model: torch.nn.Module,
    dataset: ShardDataset,
    indices: np.ndarray,
    size: int,
    batch_size: int,
    device: torch.device,
    progress: Progress,
) -> list[torch.Tensor]:
    """`lpips_features` of the images at `indices`, read and computed `batch_size` at a time, one tensor per layer."""
    parts = []
    for start in range(0, len(indices), batch_size):
        batch = torch.stack([dataset[int(i)][0] for i in indices[start : start + batch_size]]).to(device)
        parts.append(lpips_features(model, batch, size))
        progress.advance(len(batch), {})
    return [torch.cat(layer) for layer in zip(*parts)]


def _pair_distances(
    model: torch.nn.Module, features: list[torch.Tensor], first: torch.Tensor, second: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """The LPIPS distance of every pair (`first[k]`, `second[k]`) of feature rows, `batch_size` pairs at a time."""
    return torch.cat(
        [
            lpips_from_features(
                model,
                [f[first[s : s + batch_size]] for f in features],
                [f[second[s : s + batch_size]] for f in features],
            )
            for s in range(0, len(first), batch_size)
        ]
    )


def _summary(
    dataset: ShardDataset,
    per_class: dict[int, float],
    counts: dict[int, int],
    size: int,
    skipped: list[int],
    backbone: Path,
) -> dict[str, Any]:
    """What `measure_lpips_diversity` returns: the mean over classes, per-class values and pair counts, sizes."""
    result = {
        "metric": "lpips-alex-v0.1",
        "mean": float(np.mean(list(per_class.values()))),
        "per_class": per_class,
        "pairs": counts,
        "resolution": size,
        "stored_resolution": dataset.resolution,
        "upsampled": size != dataset.resolution,
        "images": len(dataset),
        "skipped_classes": skipped,
        "backbone": str(backbone),
    }
    if dataset.class_names:
        result["class_names"] = {c: dataset.class_names[c] for c in per_class}
    return result
