"""Feature taps: teacher stage outputs (logits and features from one forward) and student block tokens.

Per batch, the teacher's stage features come from timm's feature API (`forward_intermediates`) where it has one that
agrees with forward hooks, else from hooks (`TeacherTaps`). Finding and measuring the stages probes with hooks.

Teacher stages are the modules named by the model's `feature_info` (timm models and `dfkd train-teacher`
files); for models without it (torchvision) a probe forward picks, for each feature-map size, the module
that is outermost (fewest dots in its name; the last such to finish) among those with that output size
(resnet: relu, layer1..layer4; regnet: stem, block1..block4). Stage index k is the k-th of these,
shallow to deep; its reduction (stride) is measured at the training resolution.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn

from synth.common.errors import UserError, first_line
from synth.teachers.teacher import Teacher


@dataclass(frozen=True)
class Stage:
    """A teacher feature stage at the training resolution: module name, channels, (h, w), reduction, and whether
    its output is never negative (post-ReLU) or can be (a linear bottleneck; its aligner then ends without ReLU)."""

    module: str
    channels: int
    hw: tuple[int, int]
    reduction: float
    nonnegative: bool = True


def _stage_modules(model: nn.Module, size: int) -> list[str]:
    """Module names of the stages: from `feature_info` when the model has it, else one per feature-map size."""
    info = getattr(model, "feature_info", None)
    if info:
        return [d["module"] for d in info]
    chosen: dict[int, str] = {}
    for name, out in _probe(model, size).items():  # completion order: a container finishes after its children
        size = out.shape[-1]
        if out.shape[-2] == size > 1 and name.count(".") <= chosen.get(size, name).count("."):
            chosen[size] = name
    return [chosen[size] for size in sorted(chosen, reverse=True)]


def _probe(
    model: nn.Module, size: int, names: Sequence[str] | None = None, random: bool = False
) -> dict[str, torch.Tensor]:
    """Outputs (4-D tensors only) of the named modules, or of all modules, on one zero image (or two seeded noise
    images: `random`, from a private generator, leaving the global RNG alone), in completion order."""
    outputs: dict[str, torch.Tensor] = {}
    wanted = dict(model.named_modules()) if names is None else {n: model.get_submodule(n) for n in names}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                outputs.pop(name, None)
                outputs[name] = output

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in wanted.items() if n]
    device = next(model.parameters()).device
    x = (
        torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        if random
        else torch.zeros(1, 3, size, size)
    ).to(device)
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:  # noqa: BLE001 - too small an input for this teacher
        raise UserError(
            f"the teacher cannot run at the student's input size {size} px ({type(exc).__name__}: {first_line(exc)})"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def teacher_stages(teacher: Teacher, size: int) -> list[Stage]:
    """The teacher's feature stages, shallow to deep, measured on a `size` x `size` input."""
    names = _stage_modules(teacher.model, size)
    shapes = _probe(teacher.model, size, names, random=True)
    return [
        Stage(
            n,
            shapes[n].shape[1],
            tuple(shapes[n].shape[-2:]),
            size / shapes[n].shape[-1],
            nonnegative=bool(shapes[n].min() >= 0),
        )
        for n in names
        if n in shapes
    ]


def default_stage(stages: Sequence[Stage], patch_size: int) -> int:
    """Index of the stage whose reduction matches the patch size; else the nearest in log scale (ties: deeper)."""
    return min(range(len(stages)), key=lambda i: (abs(math.log2(stages[i].reduction / patch_size)), -i))


def default_block(student: nn.Module) -> int:
    """The last MHCA block; for a student without MHCA, the block at two thirds of the depth (as DearKD-Ti's 8/12)."""
    num_mhca = getattr(student, "num_mhca", 0)
    return num_mhca - 1 if num_mhca else max(0, round(2 * len(student.blocks) / 3) - 1)


def parse_pairs(pairs: Sequence[str], depth: int, num_stages: int) -> list[tuple[int, int]]:
    """'block:stage' strings -> (block, stage) index pairs, checked against the student depth and teacher stages."""
    parsed = []
    for text in pairs:
        try:
            block, stage = (int(v) for v in str(text).split(":"))
        except ValueError:
            raise UserError(f"hidden pair '{text}' is not 'block:stage' (e.g. 7:3)") from None
        if not (0 <= block < depth and 0 <= stage < num_stages):
            raise UserError(f"hidden pair '{text}': block must be in 0-{depth - 1}, stage in 0-{num_stages - 1}")
        parsed.append((block, stage))
    return parsed


def _api_indices(model: nn.Module, modules: Sequence[str]) -> Optional[list[int]]:
    """Each module's index in the model's `feature_info`, which timm's `forward_intermediates` takes; None when the
    model lacks that API (or `forward_head`) or a module is not one of its `feature_info` stages."""
    info = [d["module"] for d in getattr(model, "feature_info", None) or ()]
    api = hasattr(model, "forward_intermediates") and hasattr(model, "forward_head")
    return [info.index(m) for m in modules] if api and modules and set(modules) <= set(info) else None


def _intermediates(model: nn.Module, x: torch.Tensor, indices: Sequence[int]) -> tuple[torch.Tensor, list]:
    """Logits and the stage features at `indices` (any order, repeats allowed) from one `forward_intermediates`
    pass, which returns the stages in forward order, then `forward_head` on its final feature map."""
    wanted = sorted(set(indices))
    final, features = model.forward_intermediates(x, indices=wanted)
    by_index = dict(zip(wanted, features))
    return model.forward_head(final), [by_index[i] for i in indices]


def _hooked(model: nn.Module, x: torch.Tensor, modules: Sequence[str]) -> tuple[torch.Tensor, list]:
    """Logits and the named modules' outputs (a module that runs twice: its last) from one forward with hooks."""
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            outputs[name] = output

        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in dict.fromkeys(modules)]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, [outputs[n] for n in modules]


def _api_matches(model: nn.Module, modules: Sequence[str], indices: Sequence[int], size: int) -> bool:
    """Whether, on two seeded noise images, `forward_intermediates` gives the very logits and stage tensors that
    hooks capture: its indices follow `feature_info` on most timm CNNs, not on all (efficientvim's do not)."""
    device = next(model.parameters()).device
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        try:
            api = _intermediates(model, x, indices)
        except Exception:  # noqa: BLE001 - an API that fails where the plain forward runs: keep the hooks
            return False
        hooked = _hooked(model, x, modules)
    return all(torch.equal(a, h) for a, h in zip([api[0], *api[1]], [hooked[0], *hooked[1]], strict=True))


class TeacherTaps:
    """Runs the teacher once per batch under no_grad and returns its logits and the tapped stage features.

    Where the teacher has timm's feature API (`forward_intermediates` + `forward_head`, stages named by
    `feature_info`: timm's CNNs such as resnet, regnet, mobilenetv3, efficientnet, densenet, and dfkd's
    `dfkd_cnn_*`) and, checked once on noise at the training resolution, it gives the very tensors that forward
    hooks capture, the features come from it; otherwise (torchvision models, architectures where the check fails)
    from forward hooks on the stage modules. Either way: one forward, the same logits and features.
    """

    def __init__(self, teacher: Teacher, stages: Sequence[Stage]):
        self.teacher, self.stages = teacher, list(stages)
        self.names = [s.module for s in self.stages]
        self.indices = _api_indices(teacher.model, self.names)
        if self.indices is not None:
            size = round(self.stages[0].reduction * self.stages[0].hw[1])  # the resolution the stages were measured at
            self.indices = self.indices if _api_matches(teacher.model, self.names, self.indices, size) else None

    @property
    def uses_feature_api(self) -> bool:
        """Whether the features come from timm's `forward_intermediates` (else from forward hooks)."""
        return self.indices is not None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher logits (fp32) and one fp32 feature map per tapped stage, from one forward on normalised x."""
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if x.is_cuda else nullcontext()
        with torch.no_grad(), autocast:
            if self.indices is not None:
                logits, features = _intermediates(self.teacher.model, x, self.indices)
            else:
                # Hooks remain for teachers without timm's feature API (torchvision models have no feature_info) and
                # those whose API disagrees with the hooked modules; with no stage tapped, this is the plain forward.
                logits, features = _hooked(self.teacher.model, x, self.names)
        return logits.float(), [f.float() for f in features]


class BlockTaps:
    """Captures the patch tokens (B, L, D) that student blocks output during its normal forward."""

    def __init__(self, student: nn.Module, blocks: Sequence[int]):
        self.blocks, self.enabled = list(blocks), True
        self.tokens: dict[int, torch.Tensor] = {}
        prefix = student.num_prefix_tokens
        self._handles = [student.blocks[b].register_forward_hook(self._hook(b, prefix)) for b in self.blocks]

    def _hook(self, block: int, prefix: int):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if self.enabled:
                self.tokens[block] = output[:, prefix:]

        return record

    def take(self) -> list[torch.Tensor]:
        """The tokens of the tapped blocks from the last forward (in `blocks` order), then forget them."""
        tokens = [self.tokens[b] for b in self.blocks]
        self.tokens = {}
        return tokens
