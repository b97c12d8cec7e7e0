"""Data path: ShardDataset through a DataLoader vs a PNG ImageFolder and a raw uint8 memmap of the same images.

    python bench/data_path.py [--workers 2] [--epochs 3] [--sets 2000x32,500x224] [--threads 1]

For each image set (N images at R px, written once in each format into a temp directory), a DataLoader with
`--workers` persistent workers, shuffling, batch 64 (32 px) or 32 (224 px), reads every image as a uint8 CHW
tensor with its label; one warm-up epoch, then the median images/s of `--epochs` epochs. Formats, interleaved
epoch by epoch so machine noise hits all alike:

- `png`: torchvision ImageFolder (one PNG per image, class folders), PIL decode, PILToTensor.
- `memmap`: one raw uint8 (N, R, R, 3) file, numpy memmap, index + permute (the ceiling).
- `shard <compression>`: synth.shards.writer.write_shard (one image per chunk) with compression none / lzf / gzip,
  read by ShardDataset (which caches each shard's h5py `images` Dataset object per worker: looking it up by
  name per item cost more than reading a 32-px image). A batched `__getitems__` reading a batch with one
  sorted h5py fancy-index read per shard was tried too: 3-30x slower than item by item.

Images are smooth random fields plus noise (an 8x8 random image upsampled, plus N(0, 8) noise), compressing
roughly like synthesized images do; all files sit in the page cache (written just before), as in a training
run whose shards fit in memory. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from synth.shards.format import ShardDataset, shard_name
from synth.shards.writer import write_shard


def make_images(n: int, resolution: int, seed: int = 0) -> np.ndarray:
    """(n, R, R, 3) uint8: upsampled 8x8 random colour fields plus pixel noise."""
    g = torch.Generator().manual_seed(seed)
    out = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    for start in range(0, n, 250):
        k = min(250, n - start)
        low = torch.rand(k, 3, 8, 8, generator=g) * 255
        up = F.interpolate(low, size=(resolution, resolution), mode="bilinear", align_corners=False)
        up = up + torch.randn(up.shape, generator=g) * 8
        out[start : start + k] = up.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


class MemmapDataset(Dataset):
    """Raw uint8 (N, H, W, 3) images in one file, opened lazily per worker."""

    def __init__(self, path: Path, shape: tuple[int, ...], labels: np.ndarray):
        self.path, self.shape, self.labels, self._array = path, shape, labels, None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int):
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)
        return torch.from_numpy(np.array(self._array[index])).permute(2, 0, 1).contiguous(), int(self.labels[index])


def write_formats(root: Path, images: np.ndarray, labels: np.ndarray, classes: int) -> dict[str, Dataset]:
    """Write the images as PNG folder, memmap and shard variants; return a dataset per format."""
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import PILToTensor

    n = len(images)
    datasets: dict[str, Dataset] = {}
    png = root / "png"
    for c in range(classes):
        (png / f"{c:03d}").mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(png / f"{label:03d}" / f"{i:06d}.png")
    datasets["png (ImageFolder + PIL)"] = ImageFolder(str(png), transform=PILToTensor())
    raw = root / "images.u8"
    images.tofile(raw)
    datasets["memmap (raw uint8)"] = MemmapDataset(raw, images.shape, labels)
    for compression in ("none", "lzf", "gzip"):
        folder = root / f"shard-{compression}"
        folder.mkdir()
        per_shard = 1000  # several shards, as a synthesis run writes them
        for k, start in enumerate(range(0, n, per_shard)):
            stop = min(n, start + per_shard)
            write_shard(
                folder / shard_name(k),
                images[start:stop],
                labels[start:stop],
                np.arange(start, stop),
                None,
                num_classes=classes,
                mean=(0.5,) * 3,
                std=(0.5,) * 3,
                teacher={},
                config={},
                compression=compression,
            )
        size = sum(p.stat().st_size for p in folder.iterdir())
        datasets[f"shard {compression} ({size / n / 1024:.1f} KiB/image)"] = ShardDataset(folder)
    return datasets


def epoch_rate(loader: DataLoader) -> float:
    """Images per second of one pass over the loader."""
    start, count = time.perf_counter(), 0
    for images, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sets", default="2000x32,500x224", help="images x resolution, comma separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sequential", action="store_true", help="no shuffling")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# bench/data_path.py, {args.workers} workers, {'sequential' if args.sequential else 'shuffled'}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; median of {args.epochs} epochs after one warm-up epoch"
    )
    for item in args.sets.split(","):
        n, res = (int(v) for v in item.split("x"))
        classes = 10
        images = make_images(n, res)
        labels = np.arange(n) % classes
        with tempfile.TemporaryDirectory() as tmp:
            datasets = write_formats(Path(tmp), images, labels, classes)
            batch = 64 if res <= 64 else 32
            loaders = {
                name: DataLoader(
                    ds,
                    batch_size=batch,
                    shuffle=not args.sequential,
                    num_workers=args.workers,
                    persistent_workers=args.workers > 0,
                    generator=torch.Generator().manual_seed(0),
                )
                for name, ds in datasets.items()
            }
            rates: dict[str, list[float]] = {name: [] for name in loaders}
            for name, loader in loaders.items():
                epoch_rate(loader)  # warm-up: worker start, file handles, page cache
            for _ in range(args.epochs):
                for name, loader in loaders.items():
                    rates[name].append(epoch_rate(loader))
            medians = {name: statistics.median(r) for name, r in rates.items()}
            png = medians["png (ImageFolder + PIL)"]
            raw = medians["memmap (raw uint8)"]
            print(f"\n### {n} images at {res} px, batch {batch}")
            print("| format | images/s | x PNG folder | / memmap |")
            print("|---|---|---|---|")
            for name, rate in medians.items():
                print(f"| {name} | {rate:,.0f} | {rate / png:.2f} | {raw / rate:.2f} |", flush=True)
            del loaders


if __name__ == "__main__":
    main()
