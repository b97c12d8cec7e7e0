"""Counted FLOPs per synthesized image at the ImageNet recipes' shapes: the pixel engine (`df_dearkd_imagenet`) against
the generator engine (`df_dearkd_imagenet_generator`), for the projection to ImageNet without a GPU.

    python bench/generator_flops.py [--teacher regnety_160] [--batch 4]

FLOPs are counted by torch.utils.flop_counter on CPU at fp32 (matmuls and convolutions, forward and backward), so
they do not depend on the machine; the teacher has random weights (the FLOPs do not depend on them either). Per image:

  pixel engine      sum over stages of iterations x (one inversion iteration at that resolution), plus the final
                    forward for the stored logits
  generator engine  steps x (one generator step: generator forward, teacher forward and backward, backward through
                    the generator) + the warm-up units' extra steps shared over a chain's images, plus the final
                    generator and teacher forward

One step or iteration is counted as count(2) - count(1) over whole units of `--batch` images, so set-up and the
final forward cancel out.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from dfkd.pipeline.end_to_end import recipe_config
from dfkd.recipe_loader import load_recipe
from synth.config import SynthesisConfig
from synth.generator.adapt import adapt_unit
from synth.generator.network import build_generator
from synth.inversion.invert import invert_batch
from synth.teachers.checkpoint import save_teacher_file
from synth.teachers.sources import load_teacher
from synth.teachers.teacher import Teacher


def counted(run) -> float:
    """FLOPs of `run()`."""
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def random_teacher(arch: str, folder: Path) -> Teacher:
    """`arch` from timm with random weights, as a dfkd teacher at 224 px with ImageNet's normalisation."""
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=1000)
    path = folder / "teacher.pt"
    save_teacher_file(path, arch, {"num_classes": 1000}, model, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224)
    return load_teacher(str(path))


def pixel_flops(teacher: Teacher, config: SynthesisConfig, labels: torch.Tensor) -> tuple[float, dict[int, float]]:
    """(FLOPs per image of the recipe's schedule, FLOPs per image of one iteration at each resolution)."""
    per_iteration = {}
    for resolution in config.schedule.resolutions:

        def unit(iterations: int, resolution: int = resolution) -> float:
            schedule = replace(config.schedule, resolutions=[resolution], iterations=[iterations])
            return counted(lambda: invert_batch(teacher, labels, config.losses, schedule, torch.Generator()))

        per_iteration[resolution] = (unit(2) - unit(1)) / len(labels)
    size = config.schedule.resolutions[-1]
    final = counted(lambda: teacher.model(torch.zeros(len(labels), 3, size, size))) / len(labels)
    total = sum(per_iteration[r] * n for r, n in zip(config.schedule.resolutions, config.schedule.iterations))
    return total + final, per_iteration


def generator_flops(teacher: Teacher, config: SynthesisConfig, labels: torch.Tensor) -> tuple[float, float]:
    """(FLOPs per image of one unit with its share of the warm-up, FLOPs per image of one generator step)."""
    settings, resolution = config.generator, config.schedule.resolutions[-1]
    network = build_generator(settings, teacher.num_classes, resolution, 3, 0)

    def unit(steps: int) -> float:
        return counted(lambda: adapt_unit(network, teacher, labels, config, steps, torch.Generator()))

    one, two = unit(1), unit(2)
    step = (two - one) / len(labels)
    final = one / len(labels) - step
    images_per_chain = teacher.num_classes * config.per_class / settings.chains  # every class, the recipe's count
    units_per_chain = images_per_chain / (config.classes_per_batch * config.images_per_class)
    warmup = settings.warmup_units * (settings.warmup_steps - settings.steps) / units_per_chain
    return (settings.steps + warmup) * step + final, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="a timm architecture [default: the recipe's]")
    parser.add_argument("--batch", type=int, default=4, help="images per counted unit (2 classes x batch/2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    labels = torch.arange(2).repeat_interleave(args.batch // 2)
    pixel_recipe = load_recipe("df_dearkd_imagenet", "synthesize")
    arch = args.teacher or pixel_recipe["teacher"].removeprefix("timm:").split(".")[0]
    with tempfile.TemporaryDirectory() as folder:
        teacher = random_teacher(arch, Path(folder))
        pixels = recipe_config(SynthesisConfig, "df_dearkd_imagenet", "synthesize", {})
        generator = recipe_config(SynthesisConfig, "df_dearkd_imagenet_generator", "synthesize", {})
        pixel_total, per_iteration = pixel_flops(teacher, pixels, labels)
        generator_total, step = generator_flops(teacher, generator, labels)
    print(f"# teacher {arch} (random weights), FLOPs per image, counted at fp32 on CPU, units of {args.batch}")
    print("| engine | schedule | GFLOP per step or iteration | TFLOP per image |")
    print("|---|---|---|---|")
    iterations = " + ".join(f"{n} @ {r} px" for r, n in zip(pixels.schedule.resolutions, pixels.schedule.iterations))
    steps = ", ".join(f"{per_iteration[r] / 1e9:.1f} @ {r} px" for r in pixels.schedule.resolutions)
    print(f"| pixels (`df_dearkd_imagenet`) | {iterations} | {steps} | {pixel_total / 1e12:.2f} |")
    g = generator.generator
    print(
        f"| generator (`df_dearkd_imagenet_generator`) | {g.steps} steps @ {generator.schedule.resolutions[-1]} px, warm-up {g.warmup_units} x "
        f"{g.warmup_steps} per chain | {step / 1e9:.1f} | {generator_total / 1e12:.3f} |"
    )
    print(f"\nThe generator engine needs {pixel_total / generator_total:.0f}x fewer FLOPs per image.")


if __name__ == "__main__":
    main()
