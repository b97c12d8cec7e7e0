"""The bf16-vs-fp32 numerics check of bench/gpu.py (run that script, not this module): one step from the same images
and a short inversion from one seed, each against fp32 eager, with the tolerances of CHECKS."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from gpu_measure import Setup, batch_labels, compile_option, invert

from synth.config import LossWeights
from synth.inversion.step import compiled_inversion_step, inversion_step
from synth.inversion.terms import BNStatisticsLoss
from synth.teachers.teacher import EmbeddingTap, Teacher

# (row, weights, tolerances: worst loss-term relative error, image-gradient cosine, final-loss relative error after
# 10 iterations, mean absolute pixel difference in [0, 1] after 10 iterations). The intra-divergence and triplet
# terms work on distances between nearly identical embeddings, where bf16's 8-bit mantissa costs the most, hence
# the looser second row.
CHECKS = (
    ("DeepInversion terms", LossWeights(ep=0.0, triplet=0.0), (5e-2, 0.99, 0.05, 0.02)),
    ("all DF-DearKD terms", LossWeights(), (5e-2, 0.98, 0.10, 0.05)),
)


@contextlib.contextmanager
def _true_fp32():
    """TF32 off while the fp32 reference runs (the bench allows it elsewhere)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def numerics_check(
    setup: Setup, teacher: Teacher, model: torch.nn.Module, batch: int, modes: list[str]
) -> tuple[list[str], bool]:
    """bf16 (+channels_last, +compile) step and short inversion against fp32 eager; table lines and the verdict."""
    resolution = setup.resolutions[0]
    labels = batch_labels(batch, teacher.num_classes, setup.device)
    x = torch.randn(batch, 3, resolution, resolution, device=setup.device)

    def step(mode: str, low_precision: bool, weights: LossWeights) -> tuple[dict[str, float], torch.Tensor]:
        inp = x.clone().requires_grad_(True)
        aug = inp.contiguous(memory_format=torch.channels_last) if low_precision and setup.channels_last else inp * 1
        bn_loss, tap = BNStatisticsLoss(teacher.bn_layers, weights.bn_first), EmbeddingTap(teacher.classifier)
        try:
            fn = compiled_inversion_step(compile_option(mode)) or inversion_step
            terms = fn(model, aug, labels, bn_loss, tap, weights, setup.dtype if low_precision else None)
            terms["total"].backward()
        finally:
            bn_loss.remove()
            tap.remove()
        return {k: float(v.detach()) for k, v in terms.items()}, inp.grad.detach().float()

    ok, lines = True, []
    for label, weights, tol in CHECKS:
        if label != "all DF-DearKD terms" and setup.device.type == "cuda":
            modes_here = ["eager"]  # other weights would compile new graphs: eager only for this row
        else:
            modes_here = modes
        with _true_fp32():
            ref_terms, ref_grad = step("eager", False, weights)
            ref_run = invert(
                setup, teacher, model, batch, resolution, 10, "eager", seed=1, autocast=False, weights=weights
            )
        for mode in modes_here:
            terms, grad = step(mode, True, weights)
            worst = max(abs(terms[k] - ref_terms[k]) / max(abs(ref_terms[k]), 1e-3) for k in ref_terms)
            cosine = float(F.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0))
            run = invert(setup, teacher, model, batch, resolution, 10, mode, seed=1, weights=weights)
            loss_rel = abs(run.losses["total"] - ref_run.losses["total"]) / max(abs(ref_run.losses["total"]), 1e-6)
            pixel = float((run.images.float() - ref_run.images.float()).abs().mean() / 255)
            values = (worst, cosine, loss_rel, pixel)
            passed = values[0] <= tol[0] and values[1] >= tol[1] and values[2] <= tol[2] and values[3] <= tol[3]
            ok &= passed
            path = str(setup.dtype).replace("torch.", "") + ("+channels_last" if setup.channels_last else "")
            lines.append(
                f"| {label} | {path} {mode} | {worst:.1e} (<= {tol[0]}) | {cosine:.4f} (>= {tol[1]}) | "
                f"{loss_rel:.1e} (<= {tol[2]}) | {pixel:.4f} (<= {tol[3]}) | {'PASS' if passed else 'FAIL'} |"
            )
    return lines, ok
