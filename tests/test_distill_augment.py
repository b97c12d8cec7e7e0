"""Our stand-in for timm's batch Mixup/CutMix against timm's own output and random draws."""

import numpy as np
import pytest
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target

from dfkd.distill.inputs.batch import BatchMix

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
