"""Our stand-ins for timm internals (batch Mixup/CutMix, posterize) against timm's own output and random draws."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import Mixup, auto_augment
from timm.data.mixup import mixup_target

from dfkd.distill import AugmentConfig
from dfkd.distill.batch import BatchMix
from dfkd.distill.transforms import Posterize, train_transform

# (mixup alpha, cutmix alpha, prob, switch prob): both, Mixup only, CutMix only, mixing on half the batches
MIX_SETTINGS = [(0.8, 1.0, 1.0, 0.5), (0.8, 0.0, 1.0, 0.5), (0.0, 1.0, 1.0, 0.5), (0.8, 1.0, 0.5, 0.3)]


def _numpy_state() -> tuple:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, keys.tolist(), pos, has_gauss, cached


@pytest.mark.parametrize("mixup, cutmix, prob, switch_prob", MIX_SETTINGS)
def test_batch_mix_matches_timm_mixup_in_batch_mode(mixup, cutmix, prob, switch_prob):
    timm_mix = Mixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        prob=prob,
        switch_prob=switch_prob,
        mode="batch",
        label_smoothing=0.1,
        num_classes=10,
    )
    ours = BatchMix(mixup, cutmix, prob, switch_prob)
    images = torch.randn(8, 3, 16, 12, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8) % 10
    lams = []
    for seed in range(40):
        np.random.seed(seed)
        expected, expected_target = timm_mix(images.clone(), labels)
        expected_state = _numpy_state()
        np.random.seed(seed)
        mixed = images.clone()
        lam = ours(mixed)
        assert _numpy_state() == expected_state  # the same draws: later augmentations see the same stream
        assert torch.equal(mixed, expected)
        assert torch.equal(mixup_target(labels, 10, lam, 0.1), expected_target)
        lams.append(lam)
    assert any(0 < lam < 1 for lam in lams) and (prob == 1 or any(lam == 1.0 for lam in lams))


def test_batch_mix_cuts_or_blends_image_i_with_image_b_minus_1_minus_i():
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 8, 8).clone()
    np.random.seed(0)
    blended = images.clone()
    lam = BatchMix(0.8, 0.0, 1.0, 0.5)(blended)
    torch.testing.assert_close(blended[:, 0, 0, 0], lam * images[:, 0, 0, 0] + (1 - lam) * images.flip(0)[:, 0, 0, 0])
    np.random.seed(0)
    cut = images.clone()
    lam = BatchMix(0.0, 1.0, 1.0, 0.5)(cut)
    own = (cut == images).float().mean(dim=(1, 2, 3))
    assert torch.equal(own, torch.full((4,), float(lam))) and ((cut == images) | (cut == images.flip(0))).all()


def _posterize_op(config: str, name: str):
    transform = train_transform(32, AugmentConfig(rand_augment=config), (0.5,) * 3)
    return next(op for t in transform.transforms for op in getattr(t, "ops", ()) if op.name == name)


@pytest.mark.parametrize(
    "config, name",
    [
        ("rand-m9-mstd0.5-inc1", "PosterizeIncreasing"),  # DeiT's: magnitude drawn around 9
        ("rand-m9-mstd101-inc1", "PosterizeIncreasing"),  # mstd > 100: magnitude uniform in 0-9
        ("rand-m6-p0.7", "Posterize"),
        ("rand-m7-p1.0-mstd0.5-inc1", "PosterizeIncreasing"),  # always applied: no draw for the probability
        ("rand-m12-mmax15-mstd2-inc1", "PosterizeIncreasing"),  # magnitudes above 10: 4 - 6 bits, black as at 0
    ],
)
def test_posterize_op_draws_and_posterizes_as_timm(config, name):
    ours = _posterize_op(config, name)
    assert isinstance(ours, Posterize)
    theirs = next(op for op in auto_augment.rand_augment_transform(config).ops if op.name == name)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    outcomes = set()
    for seed in range(60):
        random.seed(seed)
        try:
            expected = np.asarray(theirs(image))
        except ValueError:  # Pillow >= 13 refuses fewer than 1 bit; Pillow < 13 gave a black image
            expected = np.zeros_like(np.asarray(image))
        expected_state = random.getstate()
        random.seed(seed)
        got = np.asarray(ours(image))
        assert random.getstate() == expected_state and np.array_equal(got, expected)
        outcomes.add("kept" if np.array_equal(got, np.asarray(image)) else "black" if not got.any() else "posterized")
    assert "posterized" in outcomes and ("kept" in outcomes) == ("p1.0" not in config), outcomes
    assert "mmax15" not in config or "black" in outcomes, outcomes
