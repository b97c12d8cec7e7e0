"""timm's RandAugment (`rand-m9-mstd0.5-inc1`) on a uint8 batch, per sample, on the batch's device.

timm parses the string (so every `rand-...` option means what it means in timm); each image then draws its own
`n` operations (with replacement), applies each with probability `p` at a magnitude drawn around `m`, and the
operation's argument follows timm's level-to-argument rules. The operations work on uint8 images and round back to
uint8 after each one, as PIL's do. docs/method.md lists where they differ from timm's PIL operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from timm.data.auto_augment import rand_augment_transform

from synth.common.errors import UserError

ACCEPTED = "'rand-m<M>[-n<N>][-p<P>][-mstd<S>][-mmax<X>][-inc<0|1>]' (timm's RandAugment string) or none"


@dataclass
class RandAugmentSpec:
    """What a RandAugment string means, as timm reads it."""

    names: list[str]
    layers: int
    prob: float
    magnitude: float
    magnitude_std: float
    magnitude_max: float


def parse(config: str) -> RandAugmentSpec:
    """timm's reading of a RandAugment string; UserError for strings it refuses or ops this module lacks."""
    try:
        transform = rand_augment_transform(config, {"translate_const": 100, "img_mean": (128, 128, 128)})
    except (AssertionError, ValueError, KeyError) as exc:
        raise UserError(f"rand_augment '{config}' is not accepted ({type(exc).__name__}); give {ACCEPTED}") from None
    names = [op.name for op in transform.ops]
    if transform.choice_weights is not None or not set(names) <= set(OPS):
        raise UserError(f"rand_augment '{config}' uses a weighted or custom op set; give {ACCEPTED}")
    op = transform.ops[0]
    return RandAugmentSpec(
        names,
        transform.num_layers,
        op.prob,
        op.magnitude,
        op.hparams.get("magnitude_std", 0),
        op.hparams.get("magnitude_max", None) or 10,
    )


def level_args(name: str, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """timm's LEVEL_TO_ARG for op `name`, per sample: `level` is the magnitude / 10, `sign` +-1 (timm's random
    negation, used by the signed ops only)."""
    if name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        return sign * level * {"Rotate": 30.0, "ShearX": 0.3, "ShearY": 0.3}.get(name, 0.45)
    if name.startswith("Posterize"):
        bits = (level * 4).floor()
        return 4 - bits if name == "PosterizeIncreasing" else bits
    if name.startswith("Solarize"):
        if name == "SolarizeAdd":
            return (level * 110).floor().clamp(max=128)
        threshold = (level * 256).floor().clamp(max=256)
        return 256 - threshold if name == "SolarizeIncreasing" else threshold
    if name.endswith("Increasing"):  # Color, Contrast, Brightness, Sharpness: 1 -+ up to 0.9
        return (1.0 + sign * level * 0.9).clamp(min=0.1)
    return level * 1.8 + 0.1  # Color, Contrast, Brightness, Sharpness: 0.1 - 1.9


def take(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """The images `rows` of a batch, copied (image by image: on CPU 5-10x faster than index_select for big images)."""
    return torch.stack([x[i] for i in rows]) if rows else x[:0].clone()


def put(x: torch.Tensor, rows: list[int], images: torch.Tensor) -> None:
    """Write `images` back into the batch `x` at `rows`, in place (image by image, as `take`)."""
    for i, image in zip(rows, images):
        x[i].copy_(image)


def _truncate(x: torch.Tensor) -> torch.Tensor:
    """Float pixels -> uint8, clipped to 0-255 and truncated, as PIL's blend and point tables."""
    return x.clamp_(0, 255).to(torch.uint8)


def _lookup(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Per-sample (and per-channel) lookup tables, as PIL's Image.point: `table` (k, 1 or 3, 256) of 0-255 values."""
    k, c = x.shape[:2]
    table = _truncate(table if table.is_floating_point() else table.float()).expand(k, c, 256).reshape(k * c, 256)
    return table.gather(1, x.reshape(k * c, -1).long()).view_as(x)


def _levels(x: torch.Tensor) -> torch.Tensor:
    """0-255 as float, on x's device, shaped (1, 1, 256) for per-sample tables."""
    return torch.arange(256, device=x.device, dtype=torch.float).view(1, 1, 256)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """PIL's 'L' of float RGB in 0-255 (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B), one channel."""
    return rgb_to_grayscale(x / 255) * 255


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: degenerate + factor * (image - degenerate), per sample, truncated."""
    return _truncate(torch.lerp(degenerate, x, factor.view(-1, 1, 1, 1)))


def _color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grayscale image (factor 0: gray, 1: unchanged)."""
    image = x.float()
    return _blend(_luma(image).round_().expand(-1, 3, -1, -1), image, factor)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean gray level (PIL: int(mean of L + 0.5)): a table per sample."""
    mean = (_luma(x.float()).mean(dim=(1, 2, 3)) + 0.5).floor().view(-1, 1, 1)
    return _lookup(x, mean + factor.view(-1, 1, 1) * (_levels(x) - mean))


def _sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter (3x3, centre weight 5 of 13: the 3x3 sum + 4 x the pixel); the border keeps
    its pixels, as in PIL."""
    image = x.float()
    rows = image[:, :, :-2] + image[:, :, 1:-1] + image[:, :, 2:]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    smooth = image.clone()
    smooth[:, :, 1:-1, 1:-1] = box.add_(image[:, :, 1:-1, 1:-1], alpha=4).div_(13).round_()
    return _blend(smooth, image, factor)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """PIL's autocontrast: each channel stretched from its min-max to 0-255 (a flat channel stays); the table
    computed as PIL does, int(level * scale + offset) in double precision."""
    low, high = x.amin(dim=(2, 3)).double().unsqueeze(-1), x.amax(dim=(2, 3)).double().unsqueeze(-1)
    flat = high <= low
    scale = torch.where(flat, 1.0, torch.full_like(low, 255.0).div((high - low).clamp(min=1)))  # not 255 * 1/x
    offset = torch.where(flat, 0.0, -low * scale)
    return _lookup(x, _levels(x).double() * scale + offset)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's equalize: per channel, a table from the histogram (step: the pixels below the top value / 255; a
    channel with one value, or step 0, stays)."""
    k, c = x.shape[:2]
    flat = x.reshape(k * c, -1).long()
    offsets = torch.arange(k * c, device=x.device).view(-1, 1) * 256
    hist = torch.bincount((flat + offsets).view(-1), minlength=k * c * 256).view(k * c, 256)
    step = (flat.shape[1] - hist.gather(1, flat.amax(dim=1, keepdim=True))) // 255
    table = (hist.cumsum(1) - hist + step // 2) // step.clamp(min=1)
    table = torch.where(step > 0, table, torch.arange(256, device=x.device))
    return _lookup(x, table.view(k, c, 256))


def _solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert the pixels at or above the threshold."""
    levels = _levels(x)
    return _lookup(x, torch.where(levels < threshold.view(-1, 1, 1), levels, 255 - levels))


def _solarize_add(x: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """Add to the pixels below 128."""
    levels = _levels(x)
    return _lookup(x, torch.where(levels < 128, levels + add.view(-1, 1, 1), levels))


def _posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top `bits` bits (0 bits: black, as Pillow < 13 gave; 8 or more: unchanged)."""
    drop = 8 - bits.clamp(0, 8).long()
    mask = torch.bitwise_left_shift(torch.full_like(drop, 0xFF), drop) & 0xFF
    return x & mask.to(torch.uint8).view(-1, 1, 1, 1)


def _affine(x: torch.Tensor, matrices: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """PIL's Image.transform(AFFINE), bilinear: output pixel centre (X, Y) samples the input at
    (a X + b Y + c, d X + e Y + f), pixel units with centres at +0.5; outside takes `fill`."""
    k, _, h, w = x.shape
    a, b, c, d, e, f = (m.view(-1, 1, 1) for m in matrices.unbind(1))
    px = torch.arange(w, device=x.device, dtype=torch.float).view(1, 1, -1) + 0.5
    py = torch.arange(h, device=x.device, dtype=torch.float).view(1, -1, 1) + 0.5
    grid = torch.stack([(a * px + b * py + c) * (2 / w) - 1, (d * px + e * py + f) * (2 / h) - 1], dim=-1)
    shifted = x.float() - fill
    return _truncate(F.grid_sample(shifted, grid, mode="bilinear", align_corners=False).add_(fill).round_())


def _shear_or_rotate(name: str, arg: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The PIL affine coefficients (a, b, c, d, e, f) per sample of timm's shear_x, shear_y and rotate."""
    one, zero = torch.ones_like(arg), torch.zeros_like(arg)
    if name == "Rotate":  # counter-clockwise by `arg` degrees about the image centre
        cos, sin = torch.cos(torch.deg2rad(-arg)), torch.sin(torch.deg2rad(-arg))
        cx, cy = w / 2, h / 2
        return torch.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy], 1)
    return torch.stack((one, arg, zero, zero, one, zero) if name == "ShearX" else (one, zero, zero, arg, one, zero), 1)


def _translate(x: torch.Tensor, pixels: list[int], dim: int, fill: torch.Tensor) -> torch.Tensor:
    """Each image moved by a whole number of pixels along `dim` (3: x, 2: y): output pixel i shows input pixel
    i + pixels, as PIL's translate; the uncovered strip takes `fill`."""
    out = fill.to(torch.uint8).expand_as(x).clone()
    size = x.shape[dim]
    for i, p in enumerate(pixels):
        p = max(-size, min(size, p))
        out[i].narrow(dim - 1, max(0, -p), size - abs(p)).copy_(x[i].narrow(dim - 1, max(0, p), size - abs(p)))
    return out


OPS: dict[str, Callable] = {
    "AutoContrast": lambda x, _: _autocontrast(x),
    "Equalize": lambda x, _: _equalize(x),
    "Invert": lambda x, _: 255 - x,
    "Posterize": _posterize,
    "PosterizeIncreasing": _posterize,
    "Solarize": _solarize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": _color,
    "ColorIncreasing": _color,
    "Contrast": _contrast,
    "ContrastIncreasing": _contrast,
    "Brightness": lambda x, f: _lookup(x, _levels(x) * f.view(-1, 1, 1)),
    "BrightnessIncreasing": lambda x, f: _lookup(x, _levels(x) * f.view(-1, 1, 1)),
    "Sharpness": _sharpness,
    "SharpnessIncreasing": _sharpness,
}
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
OPS.update({name: None for name in GEOMETRIC})  # BatchRandAugment.apply


class BatchRandAugment:
    """RandAugment per sample of a uint8 (B, 3, H, W) batch; draws from torch's global (CPU) generator."""

    def __init__(self, config: str, fill: Sequence[float]):
        self.spec = parse(config)
        self.fill = torch.tensor([min(255, round(255 * v)) for v in fill], dtype=torch.float).view(1, 3, 1, 1)

    def magnitudes(self, count: int) -> torch.Tensor:
        """One magnitude per image and layer, as timm's AugmentOp draws them, clipped to 0 - mmax."""
        spec = self.spec
        if spec.magnitude_std == math.inf:
            drawn = torch.rand(count) * spec.magnitude
        elif spec.magnitude_std > 0:
            drawn = torch.randn(count) * spec.magnitude_std + spec.magnitude
        else:
            drawn = torch.full((count,), float(spec.magnitude))
        return drawn.clamp(0, spec.magnitude_max)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply each image's drawn ops in order, in place; returns `x`."""
        batch, _, h, w = x.shape
        names = self.spec.names
        for _ in range(self.spec.layers):
            op = torch.randint(len(names), (batch,))
            applied = torch.rand(batch) < self.spec.prob
            level = self.magnitudes(batch) / 10
            sign = torch.where(torch.rand(batch) > 0.5, -1.0, 1.0)
            for k in torch.unique(op[applied]).tolist():
                rows = torch.nonzero(applied & (op == k)).squeeze(1)
                args = level_args(names[k], level[rows], sign[rows]).to(x.device)
                put(x, rows.tolist(), self.apply(names[k], take(x, rows.tolist()), args, h, w))
        return x

    def apply(self, name: str, x: torch.Tensor, args: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Op `name` on the uint8 images `x` with their arguments."""
        fill = self.fill.to(x.device)
        if name.startswith("Translate"):
            pixels = (args * (w if name == "TranslateXRel" else h)).round().long().tolist()
            return _translate(x, pixels, 3 if name == "TranslateXRel" else 2, fill)
        if name in GEOMETRIC:
            return _affine(x, _shear_or_rotate(name, args, h, w), fill)
        return OPS[name](x, args)
