"""The class-conditional generator: label embedding and noise -> linear -> upsampling conv blocks with BatchNorm ->
sigmoid images in [0, 1] (Fast-DFKD's generator, conditioned on the class)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from synth.config import GeneratorSettings

MAX_BLOCKS = 5  # 2x upsamplings: 7 -> 224 px; smaller images start from 4-7 px
INIT_TAG = 0x67656E  # "gen": the seed stream of the initial weights, apart from the units' streams


def layout(size: int) -> tuple[int, int]:
    """(upsampling blocks, starting size): halve `size` while it stays even and at least 4 px, at most 5 times."""
    blocks = 0
    while size % 2 == 0 and size // 2 >= 4 and blocks < MAX_BLOCKS:
        size, blocks = size // 2, blocks + 1
    return blocks, size


class ConditionalGenerator(nn.Module):
    """G(z, y): images (B, channels, size, size) in [0, 1] for noise z (B, noise_dim) and class ids y (B,).

    BatchNorm always normalises by the batch (no running statistics), so the weights are the whole state."""

    def __init__(self, num_classes: int, noise_dim: int, width: int, size: int, channels: int):
        super().__init__()
        blocks, self.start = layout(size)
        wide = 2 * width
        self.embed = nn.Embedding(num_classes, noise_dim)
        self.project = nn.Linear(2 * noise_dim, wide * self.start * self.start)
        layers: list[nn.Module] = [nn.BatchNorm2d(wide, track_running_stats=False)]
        before = wide
        for block in range(blocks):
            after = wide if block < blocks - 1 else width
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(before, after, 3, padding=1, bias=False),
                nn.BatchNorm2d(after, track_running_stats=False),
                nn.LeakyReLU(0.2),
            ]
            before = after
        layers += [nn.Conv2d(before, channels, 3, padding=1), nn.Sigmoid()]
        self.blocks = nn.Sequential(*layers)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden = self.project(torch.cat((noise, self.embed(labels)), dim=1))
        return self.blocks(hidden.view(len(noise), -1, self.start, self.start))


def build_generator(
    settings: GeneratorSettings, num_classes: int, size: int, channels: int, seed: int
) -> ConditionalGenerator:
    """The generator with its seeded initial weights (the same for a seed on any machine; the global RNG untouched)."""
    state = np.random.SeedSequence([seed, INIT_TAG]).generate_state(2, dtype=np.uint32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))
        return ConditionalGenerator(num_classes, settings.noise_dim, settings.width, size, channels)
