"""A teacher's preprocessing as the user states it: normalisation (numbers or a named preset), input size and class
names; and the one-line note that says where a teacher's preprocessing came from when dfkd had to assume it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from synth.common.errors import UserError
from synth.common.settings import setting

# Per-channel statistics of common training sets, as their reference code normalises them (RGB; one value = gray).
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "half": ((0.5,), (0.5,)),  # (x - 0.5) / 0.5: inputs in [-1, 1]
    "none": ((0.0,), (1.0,)),  # inputs in [0, 1], as they are
}
STATS_TEXT = f"numbers (one per channel, or one for all) or a preset: {', '.join(PRESETS)}"


@dataclass
class Preprocessing:
    """What the teacher expects of its input, stated by the user; None: the teacher's source says (a teacher file,
    timm's pretrained_cfg), else dfkd assumes and says so in one line."""

    mean: Optional[Union[str, list[float]]] = setting(
        None, flag=True, help=f"The teacher's input mean: {STATS_TEXT}.", default_text="the teacher's source"
    )
    std: Optional[Union[str, list[float]]] = setting(
        None, flag=True, help=f"The teacher's input std: {STATS_TEXT}.", default_text="the teacher's source"
    )
    input_size: Optional[int] = setting(
        None, flag=True, help="The teacher's input size in px (square).", default_text="the teacher's source"
    )
    class_names: Optional[Union[str, list[str]]] = setting(
        None,
        flag=True,
        help="The teacher's class names: a file (one name per line, or a JSON list).",
        default_text="the teacher's source",
    )

    def validate(self) -> None:
        """Check what needs no teacher: the statistics, the size and the class-name file."""
        self.mean_values()
        self.std_values()
        if self.input_size is not None and self.input_size < 4:
            raise UserError(f"input_size must be at least 4 px, not {self.input_size}")
        self.names()

    @property
    def given(self) -> bool:
        """Whether the user stated any of it."""
        return any(v is not None for v in (self.mean, self.std, self.input_size, self.class_names))

    def mean_values(self) -> Optional[tuple[float, ...]]:
        """The mean as numbers (a preset resolved), or None."""
        return parse_stats(self.mean, "mean", 0)

    def std_values(self) -> Optional[tuple[float, ...]]:
        """The std as numbers (a preset resolved), or None."""
        return parse_stats(self.std, "std", 1)

    def names(self) -> Optional[list[str]]:
        """The class names (read from their file), or None."""
        return read_class_names(self.class_names)

    def recorded(self) -> dict:
        """What the user stated, resolved to plain data (for shard identities and cards)."""
        return {
            k: v
            for k, v in {
                "mean": _as_list(self.mean_values()),
                "std": _as_list(self.std_values()),
                "input_size": self.input_size,
                "class_names": self.names(),
            }.items()
            if v is not None
        }


def _as_list(values: Optional[Sequence[float]]) -> Optional[list[float]]:
    return list(values) if values is not None else None


def parse_stats(value: Union[None, str, Sequence], name: str, index: int) -> Optional[tuple[float, ...]]:
    """Numbers (a list, or comma-separated text) or a preset name, as a tuple of floats; None stays None."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in PRESETS:
        return PRESETS[value.strip().lower()][index]
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    try:
        numbers = tuple(float(v) for v in items if not isinstance(v, bool))
    except (TypeError, ValueError):
        numbers = ()
    if not numbers or len(numbers) != len(items) or not all(math.isfinite(v) for v in numbers):
        raise UserError(f"{name} {value!r} is not {STATS_TEXT}")
    if index == 1 and min(numbers) <= 0:
        raise UserError(f"std {value!r} must be > 0 for every channel")
    return numbers


def per_channel(values: Sequence[float], channels: int, name: str, spec: str) -> tuple[float, ...]:
    """`values` for `channels` channels: one value is repeated; any other count must equal `channels`."""
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise UserError(
            f"{name} has {len(values)} values but teacher {spec} takes {channels} input channel(s); give one value "
            f"or {channels}"
        )
    return values


def read_class_names(value: Union[None, str, Sequence[str]]) -> Optional[list[str]]:
    """Class names from a list, or from a file: a JSON list, or one name per line (blank lines ignored)."""
    if value is None or not isinstance(value, str):
        return None if value is None else [str(v) for v in value]
    path = Path(value)
    if not path.is_file():
        raise UserError(f"class_names file '{value}' does not exist (one name per line, or a JSON list)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"class_names file '{value}' is not readable UTF-8 text ({type(exc).__name__})") from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"class_names file '{value}' is not a valid JSON list: {exc.msg}, line {exc.lineno}"
            ) from None
        if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
            raise UserError(f"class_names file '{value}' must hold a JSON list of names")
        names = [str(n) for n in names]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError(f"class_names file '{value}' holds no names")
    return names


@dataclass
class Resolved:
    """A teacher's preprocessing as dfkd will use it, and where each part came from (for the note)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    class_names: Optional[list[str]]
    assumed: list[str] = field(default_factory=list)  # the parts dfkd assumed, e.g. "ImageNet mean/std"
