"""Train a small BatchNorm CNN teacher on real data (digits, Fashion-MNIST) and write a dfkd teacher file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import timm
import torch
import torch.nn.functional as F

from dfkd.data.digits import DIGITS_MEAN, DIGITS_STD
from dfkd.data.real import real_dataset
from dfkd.pipeline.config import TeacherTrainingConfig
from synth.common.runtime import use_threads
from synth.teachers.checkpoint import save_teacher_file
from synth.teachers.teacher import normalization


def to_normalized(images: np.ndarray, mean=DIGITS_MEAN, std=DIGITS_STD) -> torch.Tensor:
    """uint8 NHWC images -> float NCHW in the normalised input space."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    mean_t, std_t = normalization(mean, std)
    return (x - mean_t) / std_t


def random_shift(x: torch.Tensor, pixels: int, generator: torch.Generator, flip: bool = False) -> torch.Tensor:
    """Translate each image by up to `pixels` in each direction (zero padding of the normalised minimum), and mirror
    half of them when `flip`."""
    padded = F.pad(x, (pixels,) * 4, value=float(x.min()))
    size = x.shape[-1]
    offsets = torch.randint(0, 2 * pixels + 1, (len(x), 2), generator=generator).tolist()
    shifted = torch.stack([padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(offsets)])
    if not flip:
        return shifted
    mirror = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(mirror.view(-1, 1, 1, 1), shifted.flip(-1), shifted)


@torch.no_grad()
def held_out_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Top-1 accuracy of `model` (eval mode) on normalised inputs."""
    model.eval()
    hits = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return hits / len(x)


def train_teacher(
    config: TeacherTrainingConfig, out: str | Path, on_epoch: Optional[Callable[[int, float], None]] = None
) -> dict:
    """Train `config.arch` on the dataset's train split and write a teacher file; returns held-out accuracy and time.
    The dataset's files must be there: with `download`, the caller runs `config.fetch_data()` first (the commands do,
    before their progress bars)."""
    config.validate()
    use_threads(config.threads)
    dataset, arch, epochs = config.dataset, config.arch, config.epochs
    batch_size, lr, seed = config.batch_size, config.lr, config.seed
    started = time.time()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = real_dataset(dataset)
    split = data.load(seed, config.data_dir)
    train_x, train_y = to_normalized(split.train_images, data.mean, data.std), torch.from_numpy(split.train_labels)
    test_x, test_y = to_normalized(split.test_images, data.mean, data.std), torch.from_numpy(split.test_labels)
    model = timm.create_model(arch, num_classes=len(data.class_names))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * (len(train_x) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            index = order[i : i + batch_size]
            inputs = random_shift(train_x[index], 2, generator, flip=data.flip)
            loss = F.cross_entropy(model(inputs), train_y[index], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if on_epoch:
            on_epoch(epoch, float(loss.detach()))
    test_accuracy = held_out_accuracy(model, test_x, test_y)
    save_teacher_file(
        out,
        f"timm:{arch}",
        {"num_classes": len(data.class_names)},
        model,
        data.mean,
        data.std,
        split.train_images.shape[1],
        list(data.class_names),
        extra={"dataset": dataset, "test_accuracy": test_accuracy, "seed": seed, "epochs": epochs},
        grayscale=True,
    )  # both datasets are grayscale: synthesis then optimises one channel
    return {
        "out": str(out),
        "dataset": dataset,
        "arch": arch,
        "test_accuracy": test_accuracy,
        "train_images": len(train_x),
        "test_images": len(test_x),
        "seconds": round(time.time() - started, 2),
    }
