"""The tables of bench/gpu.py (run that script, not this module): synthesis, student training (measured as its
rows print) and numerics."""

from __future__ import annotations

from gpu_measure import Setup, student_images_per_second


def print_synthesis(setup: Setup, rows: list[str]) -> None:
    """The synthesis table."""
    r0, r1 = setup.resolutions
    print(
        "\n## Synthesis (images per GPU-hour; ms per iteration, in brackets / the floor = teacher forward + "
        "input-gradient backward)"
    )
    print(
        f"| teacher | batch | schedule | mode | ms/iter {r0}px | ms/iter {r1}px | images/GPU-hour | MFU | "
        f"warm-up+compile s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    print("(reference: DeepInversion ResNet-50 setting 0, fp32 on a V100: about 840 images per GPU-hour)")


def print_student(setup: Setup, rate: float) -> None:
    """The student training table, eager then (when compiled is a mode and the budget allows) compiled."""
    print(
        f"\n## Student training ({setup.student}, teacher {setup.student_teacher} under no_grad, batch "
        f"{setup.student_batch} at {setup.student_resolution}px, AdamW, CE on both heads)"
    )
    print("| mode | images/s | images/GPU-hour | MFU |")
    print("|---|---|---|---|")
    flops = 0.0
    for compiled in [False, True] if "compiled" in setup.modes else [False]:
        if compiled and not setup.fits("student compiled", 1.5 * max(setup.longest_compile, 60.0)):
            continue
        ips, counted = student_images_per_second(setup, compiled)
        flops = counted or flops
        print(
            f"| {'compiled' if compiled else 'eager'} | {ips:,.1f} | {ips * 3600:,.0f} | "
            f"{100 * ips * flops / rate:.1f}% |"
        )
    print(f"(counted FLOPs per image: {flops / 1e9:.3f} G = student forward + backward + teacher forward)")


def print_numerics(setup: Setup, smoke: bool, check_lines: list[str], ok: bool, check_batch: int) -> None:
    """The numerics table and its verdict line."""
    print(
        f"\n## Numerics against fp32 eager ({setup.models[0]}, batch {check_batch}, "
        f"{setup.resolutions[0]}px): one step from the same images, then 10 iterations from one seed"
    )
    print(
        "| objective | path | worst loss-term rel. error | image-gradient cosine | final loss rel. error | "
        "mean pixel difference | verdict |"
    )
    print("|---|---|---|---|---|---|---|")
    for line in check_lines:
        print(line)
    print(
        f"numerics: {'PASS' if ok else 'FAIL'}"
        + (
            " (informational in --smoke: tiny random teachers have "
            "near-identical embeddings, where bf16 costs the intra-divergence and triplet terms the most)"
            if smoke
            else ""
        )
    )
