"""`dfkd synthesize`: a CNN teacher -> labelled synthetic images in verified HDF5 shards."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from dfkd.cli.common import Reporter, common_options
from dfkd.cli.options import config_options, recipe_settings
from synth.config import SynthesisConfig

if TYPE_CHECKING:
    from synth.common import distributed
    from synth.common.runtime import Progress

EXAMPLE = """
\b
Examples:
  dfkd synthesize --config df_dearkd_imagenet --out shards/ --classes 0-99
  dfkd synthesize --teacher timm:resnet18 --out shards/ --classes 0-3 --per-class 4 \\
      --classes-per-batch 2 --images-per-class 2 --resolutions 32,64 --iterations 20,20 --device cpu
  dfkd synthesize --teacher digits-teacher.pt --config digits --out shards/

\b
Adaptive DeepInversion rounds (synthesize, distill, synthesize more against the student, continue on all):
  dfkd synthesize --config digits --teacher t.pt --out round2/ --seed 1 \\
      --student runs/round1/student.pth --a-adi 1
  dfkd distill --config digits --teacher t.pt --shards round1/,round2/ --out runs/round2

Rerunning the same command resumes an interrupted run; a finished run is left untouched.

\b
Scale out with torchrun (shards are split across processes; the result is the same):
  torchrun --nproc_per_node 4 -m dfkd synthesize --config df_dearkd_imagenet --out shards/
"""


@click.command("synthesize", epilog=EXAMPLE)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output shard directory.")
@config_options(SynthesisConfig)
@common_options(resume=())
def synthesize_command(out: str, config_path: str, json_mode: bool, quiet: bool, **options) -> None:
    """Synthesize labelled images from a CNN teacher (multi-resolution DeepInversion + DF-DearKD losses)."""
    reporter = Reporter(json_mode, quiet)
    config = recipe_settings(SynthesisConfig, "synthesize", config_path, options)  # checked: torch loads only now
    import dfkd.models  # noqa: F401  (registers the DearKD students with timm: a --student competitor)
    from synth.common import distributed
    from synth.run.engine import synthesize

    ranks = distributed.init(config.device)
    summary = synthesize(config, out, _progress(reporter, ranks), ranks)
    ranks.close()  # on failure it runs at exit, after the error line (synth.common.distributed.Ranks.close)
    if ranks.rank == 0:
        reporter.result(summary, _lines(summary, warned=not quiet and summary["shards_written"] > 0))


def _progress(reporter: Reporter, ranks: distributed.Ranks) -> Progress:
    """Rank 0 shows the progress bar (of its own share); other ranks only print notes, tagged with their rank."""
    from synth.common.runtime import Progress

    if ranks.rank != 0:
        return Progress(message=lambda text: reporter.message(f"[rank {ranks.rank}] {text}"))
    desc = "synthesize" if not ranks.distributed else f"synthesize (rank 0 of {ranks.world_size})"
    return reporter.progress(
        desc, postfix=lambda losses: {"loss": f"{losses['total']:.3f}", "ce": f"{losses['ce']:.3f}"}
    )


def _lines(summary: dict, warned: bool) -> list[str]:
    """The human-readable result; `warned`: this run printed the low-fidelity warning with its likely cause."""
    if summary["nothing_to_do"] and not summary["shards_regenerated"]:
        head = f"nothing to do: all {summary['shards']} shards in {summary['out']} are finished and verified"
    else:
        processes = summary.get("processes", 1)
        head = (
            f"wrote {summary['shards_written']} shard(s), kept {summary['shards_skipped']} finished, "
            f"in {summary['out']} ({summary['seconds']} s"
            f"{f', {processes} processes' if processes > 1 else ''})"
        )
    fidelity = summary.get("fidelity")
    lines = [head, f"images: {summary.get('images')}  complete: {summary.get('complete')}"]
    if summary.get("damaged"):
        lines.append(
            "regenerated damaged shard(s): "
            + ", ".join(f"{name} ({problem})" for name, problem in summary["damaged"].items())
        )
    if fidelity is not None:
        lines.append(f"teacher fidelity (agreement with target labels): {fidelity:.3f}")
        if summary.get("low_fidelity"):
            cause = (
                "see the warning above"
                if warned
                else "the usual cause is a BN-statistics term that swamps the class term: try a smaller --a-bn"
            )
            lines.append(
                f"LOW FIDELITY: the teacher does not see the target classes in these images; {cause} before "
                "training on them"
            )
    return lines
