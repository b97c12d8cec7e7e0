"""The batched training augmentation (dfkd.distill.inputs.augment, rand_augment, batch): shapes, dtype, range, seeded
determinism (also for a fresh process after a resume), each augmentation on and off, RandAugment against timm's
arguments and PIL's operations, Mixup/CutMix targets, and real-image folders as uint8 tensors."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment

from dfkd.distill import AugmentConfig
from dfkd.distill.inputs.augment import BatchAugment
from dfkd.distill.inputs.batch import BatchPrep
from dfkd.distill.inputs.decode import decode, folder_transform
from dfkd.distill.inputs.rand_augment import OPS, BatchRandAugment, level_args, parse
from synth.common.errors import UserError

torch.set_num_threads(1)
OFF = AugmentConfig(
    rand_augment=None, color_jitter=0.0, scale=(1.0, 1.0), hflip=0.0, mixup=0.0, cutmix=0.0, reprob=0.0, smoothing=0.0
)
MEAN = (0.5, 0.5, 0.5)


def _images(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth colour images (a gradient per channel plus noise): every op has something to change."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(40, 200, size)
    base = torch.stack(
        [
            ramp.view(1, -1).expand(size, size),
            ramp.view(-1, 1).expand(size, size),
            ramp.flip(0).view(1, -1).expand(size, size),
        ]
    )
    noisy = base + torch.randn(n, 3, size, size, generator=g) * 20
    return noisy.clamp(0, 255).to(torch.uint8)


def _prep(augment: AugmentConfig, size: int = 32, seed: int = 0) -> BatchPrep:
    return BatchPrep(MEAN, (0.5, 0.5, 0.5), 10, augment, torch.device("cpu"), size, seed=seed)


def test_shapes_dtype_and_range():
    images, labels = _images(8, 40), torch.arange(8)
    augmented = BatchAugment(32, AugmentConfig(grayscale=0.5), MEAN)(images)
    assert augmented.shape == (8, 3, 32, 32) and augmented.dtype == torch.uint8
    batch = _prep(replace(AugmentConfig(), reprob=0.0))(images, labels, key=(0, 1))
    assert batch.inputs.shape == (8, 3, 32, 32) and batch.inputs.dtype == torch.float32
    assert batch.inputs.min() >= -1 and batch.inputs.max() <= 1  # (0 - 0.5) / 0.5 .. (1 - 0.5) / 0.5
    assert batch.target.shape == (8, 10)


def test_a_seed_and_batch_key_fix_the_augmentations_also_in_a_fresh_run():
    images, labels = _images(), torch.arange(8)
    first = _prep(AugmentConfig(), seed=3)
    drawn = {key: first(images, labels, key=key).inputs for key in [(0, 1, 0), (0, 2, 0), (1, 1, 0)]}
    torch.manual_seed(123)  # a resumed process: other global RNG states, no batch drawn before
    np.random.seed(7)
    before = torch.get_rng_state(), np.random.get_state()[1].copy()
    resumed = _prep(AugmentConfig(), seed=3)
    assert torch.equal(resumed(images, labels, key=(1, 1, 0)).inputs, drawn[(1, 1, 0)])
    assert torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
    assert not torch.equal(drawn[(0, 1, 0)], drawn[(0, 2, 0)]) and not torch.equal(drawn[(0, 1, 0)], drawn[(1, 1, 0)])
    assert not torch.equal(_prep(AugmentConfig(), seed=4)(images, labels, key=(0, 1, 0)).inputs, drawn[(0, 1, 0)])


@pytest.mark.parametrize(
    "on",
    [
        dict(scale=(0.08, 1.0)),
        dict(hflip=1.0),
        dict(grayscale=1.0),
        dict(rand_augment="rand-m9-p1.0-mstd0.5-inc1"),
        dict(color_jitter=0.4),
        dict(reprob=1.0),
        dict(mixup=0.8, mix_prob=1.0),
        dict(cutmix=1.0, mix_prob=1.0),
    ],
    ids=lambda d: next(iter(d)) if len(d) == 1 else "+".join(d),
)
def test_each_augmentation_changes_every_image_when_on_and_none_when_off(on):
    images, labels = _images(), torch.arange(8)
    plain = _prep(OFF).normalize(images)
    off = {key: 0.0 for key in on if key in ("hflip", "grayscale", "reprob", "mix_prob", "color_jitter")}
    off = off or {"scale": (1.0, 1.0), "rand_augment": "rand-m9-p0.0-mstd0.5-inc1"}
    assert torch.equal(_prep(replace(OFF, **{**on, **off}))(images, labels, key=(0,)).inputs, plain)
    changed = _prep(replace(OFF, **on))(images, labels, key=(0,)).inputs
    assert all(not torch.equal(changed[i], plain[i]) for i in range(8))
    if "grayscale" in on:
        assert torch.equal(changed[:, 0], changed[:, 1]) and torch.equal(changed[:, 1], changed[:, 2])


@pytest.mark.parametrize("mixing", [dict(mixup=0.8), dict(cutmix=1.0), dict(mixup=0.8, cutmix=1.0, switch_prob=0.5)])
def test_mixup_and_cutmix_targets_sum_to_one_and_mix_two_labels(mixing):
    prep = _prep(replace(OFF, mix_prob=1.0, smoothing=0.1, **mixing))
    for step in range(4):
        target = prep(_images(), torch.arange(8), key=(0, step)).target
        torch.testing.assert_close(target.sum(1), torch.ones(8))
        assert ((target > 0.1 / 10 + 1e-6).sum(1) == 2).all()  # image i mixed with image 7 - i


def test_rand_augment_strings_are_read_by_timm_and_unknown_ones_refused():
    spec = parse("rand-m9-mstd0.5-inc1")
    assert (spec.layers, spec.prob, spec.magnitude, spec.magnitude_std, spec.magnitude_max) == (2, 0.5, 9, 0.5, 10)
    assert "PosterizeIncreasing" in spec.names and len(spec.names) == 15
    assert parse("rand-m6-n3-p0.7-mstd101-mmax15").magnitude_max == 15
    for bad in ("augmix-m5", "rand-m9-tweights", "rand-x3"):
        with pytest.raises(UserError, match="rand_augment"):
            parse(bad)


@pytest.mark.parametrize(
    "name",
    sorted(
        n
        for n in set(auto_augment._RAND_TRANSFORMS + auto_augment._RAND_INCREASING_TRANSFORMS)
        if auto_augment.LEVEL_TO_ARG[n] is not None
    ),
)
def test_level_args_are_timms(name):
    """timm's argument for a magnitude is ours with one of the two signs (timm negates at random)."""
    for magnitude in (0.0, 3.3, 6.0, 9.0, 9.7, 10.0):
        level = torch.tensor([magnitude / 10])
        ours = {round(level_args(name, level, torch.tensor([sign])).item(), 4) for sign in (1.0, -1.0)}
        for _ in range(6):
            assert round(auto_augment.LEVEL_TO_ARG[name](magnitude, {})[0], 4) in ours


@pytest.mark.parametrize(
    "name, arg, tolerance",
    [
        ("AutoContrast", 0, 0),
        ("Equalize", 0, 0),
        ("Invert", 0, 0),
        ("Posterize", 2, 0),
        ("Solarize", 100, 0),
        ("SolarizeAdd", 60, 0),
        ("Brightness", 1.6, 0),
        ("Contrast", 0.4, 0),
        ("Color", 1.7, 1),
        ("Sharpness", 1.8, 1),
        ("Rotate", 20.0, 1.5),
        ("ShearX", 0.25, 1.5),
        ("ShearY", -0.25, 1.5),
        ("TranslateXRel", 0.25, 0),
        ("TranslateYRel", -0.25, 0),
    ],
)
def test_ops_match_pils(name, arg, tolerance):
    """Point ops exactly, blends within 1, warps within 1.5 levels on average of PIL's bilinear ones (the border
    pixels differ most)."""
    images = _images(2)
    augment = BatchRandAugment("rand-m9-inc1", MEAN)
    ours = augment.apply(name, images.clone(), torch.tensor([float(arg)] * 2), 32, 32)
    assert ours.dtype == torch.uint8 and not torch.equal(ours, images)
    kwargs = dict(fillcolor=(128,) * 3, resample=Image.BILINEAR)
    for i in range(2):
        pil = Image.fromarray(images[i].permute(1, 2, 0).numpy())
        op = auto_augment.NAME_TO_OP[name]
        result = op(pil, arg, **kwargs) if auto_augment.LEVEL_TO_ARG[name] else op(pil)
        expected = torch.from_numpy(np.asarray(result)).permute(2, 0, 1)
        difference = (ours[i].int() - expected.int()).abs().float()
        assert (difference.mean() if name in ("Rotate", "ShearX", "ShearY") else difference.max()) <= tolerance


def test_posterize_to_zero_bits_gives_black_and_every_op_is_known():
    images = _images(2)
    assert not BatchRandAugment("rand-m9-inc1", MEAN).apply("PosterizeIncreasing", images, torch.zeros(2), 32, 32).any()
    assert set(parse("rand-m9-inc1").names) | set(parse("rand-m9").names) <= set(OPS)


def test_image_folders_decode_to_uint8_squares(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    image = decode(str(tmp_path / "a.png"))
    assert image.dtype == torch.uint8 and torch.equal(image, torch.from_numpy(array).permute(2, 0, 1))
    square = folder_transform(16, "bicubic")(image)
    assert square.shape == (3, 16, 16) and square.dtype == torch.uint8
    assert folder_transform(16, "bicubic", crop_pct=0.5)(image).shape == (3, 16, 16)
