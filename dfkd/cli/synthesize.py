"""`dfkd synthesize`: a CNN teacher -> labelled synthetic images in verified HDF5 shards."""
from __future__ import annotations

import click

from dfkd.cli.common import Reporter, common_options, overrides
from dfkd.config import apply_overrides, build, load_recipe
from synth import distributed
from synth.config import SynthesisConfig
from synth.engine import synthesize as run_synthesis
from synth.runtime import Progress

EXAMPLE = """
\b
Examples:
  dfkd synthesize --config df_dearkd_imagenet --out shards/ --classes 0-99
  dfkd synthesize --teacher timm:resnet18 --out shards/ --classes 0-3 --per-class 4 \\
      --classes-per-batch 2 --images-per-class 2 --resolutions 32,64 --iterations 20,20 --device cpu
  dfkd synthesize --teacher digits-teacher.pt --config digits --out shards/

Adaptive DeepInversion rounds (synthesize, distill, synthesize more against the student, continue on all):
  dfkd synthesize --config digits --teacher t.pt --out round2/ --seed 1 \
      --student runs/round1/student.pth --a-adi 1
  dfkd distill --config digits --teacher t.pt --shards round1/,round2/ --out runs/round2

Rerunning the same command resumes an interrupted run; a finished run is left untouched.

\b
Scale out with torchrun (shards are split across processes; the result is the same):
  torchrun --nproc_per_node 4 -m dfkd synthesize --config df_dearkd_imagenet --out shards/
"""


@click.command(epilog=EXAMPLE)
@click.option("--teacher", help="timm:<name>[.<tag>], torchvision:<name>, or a file from `dfkd train-teacher`.")
@click.option("--teacher-weights", type=click.Path(dir_okay=False),
              help="Weights file (state_dict, dict with state_dict/model, or .safetensors).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output shard directory.")
@click.option("--classes", help="Classes to synthesize: all, 0-99, or 1,5,7-9. [default: all]")
@click.option("--per-class", type=int,
              help="Images per class in total (a multiple of --images-per-class). [default: 8]")
@click.option("--classes-per-batch", type=int,
              help="Classes in one batch (>= 2; divides the number of classes). [default: 8]")
@click.option("--images-per-class", type=int, help="Images of each class in one batch (>= 2). [default: 4]")
@click.option("--units-per-shard", type=int, help="Batches (work units) per shard file. [default: 16]")
@click.option("--resolutions", help="Stage resolutions, low to high. [default: 112,224]")
@click.option("--iterations", help="Iterations per stage. [default: 2000,2000]")
@click.option("--multires", type=click.Choice(["upsample", "pool"]),
              help="upsample: optimise at low res then upsample; pool: optimise full res, pool it in early stages. "
                   "[default: upsample]")
@click.option("--lr", type=float, help="Adam learning rate. [default: 0.25]")
@click.option("--a-ce", type=float, help="Cross-entropy weight. [default: 1]")
@click.option("--a-bn", type=float, help="BN-statistics weight (0.05 is the paper's with --bn-norm paper). "
                                      "[default: 10]")
@click.option("--bn-first", type=float, help="Multiplier of the first BN layer. [default: 10]")
@click.option("--bn-norm", type=click.Choice(["normalized", "paper"]),
              help="normalized: each layer's distance relative to its running statistics, averaged over layers "
                   "(one --a-bn fits any teacher); paper: DeepInversion's sum of absolute distances. "
                   "[default: normalized]")
@click.option("--a-tv", type=float, help="Total-variation prior weight. [default: 1e-4]")
@click.option("--a-l2", type=float, help="L2 prior weight. [default: 1e-5]")
@click.option("--a-ep", type=float, help="Intra-divergence weight. [default: 50]")
@click.option("--ep-margin", type=float, help="Intra-divergence margin m_ep. [default: 0.5]")
@click.option("--ep-form", type=click.Choice(["saturating", "unbounded"]),
              help="Intra-divergence form: saturating mean max(0, m_ep - d) (stops at the margin) or unbounded "
                   "-mean d (the paper's literal form; needs a small --a-ep). [default: saturating]")
@click.option("--a-triplet", type=float, help="Triplet weight. [default: 0.5]")
@click.option("--triplet-margin", type=float, help="Triplet margin. [default: 0.5]")
@click.option("--student", type=click.Path(dir_okay=False),
              help="Adaptive DeepInversion: a student.pth from `dfkd distill`; new images go where it still "
                   "disagrees with the teacher (needs --a-adi). Its file and sha256 join the shard config.")
@click.option("--a-adi", type=float, help="Weight of the competition term 1 - JS(teacher, student). [default: 0]")
@click.option("--seed", type=int, help="Global seed. [default: 0]")
@click.option("--threads", type=int, help="CPU threads (part of the config). [default: all cores]")
@click.option("--device", help="auto, cpu, cuda or cuda:N. [default: auto]")
@click.option("--compression", type=click.Choice(["none", "lzf", "gzip"]), help="[default: none]")
@click.option("--logits/--no-logits", default=None, help="Store teacher logits. [default: on]")
@click.option("--compile/--no-compile", "compile_model", default=None, help="torch.compile the teacher. [default: off]")
@common_options
def synthesize(out: str, config_path: str, json_mode: bool, quiet: bool, **options) -> None:
    """Synthesize labelled images from a CNN teacher (multi-resolution DeepInversion + DF-DearKD losses)."""
    reporter = Reporter(json_mode, quiet)
    data = apply_overrides(load_recipe(config_path, "synthesize"), overrides({
        "teacher": options["teacher"], "teacher_weights": options["teacher_weights"],
        "classes": options["classes"], "per_class": options["per_class"],
        "classes_per_batch": options["classes_per_batch"], "images_per_class": options["images_per_class"],
        "units_per_shard": options["units_per_shard"], "seed": options["seed"], "threads": options["threads"],
        "device": options["device"], "compression": options["compression"], "store_logits": options["logits"],
        "compile": options["compile_model"], "student": options["student"],
        "schedule.resolutions": options["resolutions"], "schedule.iterations": options["iterations"],
        "schedule.multires": options["multires"], "schedule.lr": options["lr"],
        "losses.ce": options["a_ce"], "losses.bn": options["a_bn"], "losses.bn_first": options["bn_first"], "losses.bn_norm": options["bn_norm"],
        "losses.tv": options["a_tv"], "losses.l2": options["a_l2"], "losses.ep": options["a_ep"],
        "losses.ep_margin": options["ep_margin"], "losses.ep_form": options["ep_form"],
        "losses.triplet": options["a_triplet"], "losses.triplet_margin": options["triplet_margin"],
        "losses.adi": options["a_adi"],
    }))
    config = build(SynthesisConfig, data)
    ranks = distributed.init(config.device)
    summary = run_synthesis(config, out, _progress(reporter, ranks), ranks)
    ranks.close()  # on failure it runs at exit, after the error line (synth.distributed.Ranks.close)
    if ranks.rank == 0:
        reporter.result(summary, _lines(summary))


def _progress(reporter: Reporter, ranks: distributed.Ranks) -> Progress:
    """Rank 0 shows the progress bar (of its own share); other ranks only print notes, tagged with their rank."""
    if ranks.rank != 0:
        return Progress(message=lambda text: reporter.message(f"[rank {ranks.rank}] {text}"))
    desc = "synthesize" if not ranks.distributed else f"synthesize (rank 0 of {ranks.world_size})"
    return reporter.progress(desc, postfix=lambda losses: {"loss": f"{losses['total']:.3f}",
                                                           "ce": f"{losses['ce']:.3f}"})


def _lines(summary: dict) -> list[str]:
    if summary["nothing_to_do"] and not summary["shards_regenerated"]:
        head = f"nothing to do: all {summary['shards']} shards in {summary['out']} are finished and verified"
    else:
        processes = summary.get("processes", 1)
        head = (f"wrote {summary['shards_written']} shard(s), kept {summary['shards_skipped']} finished, "
                f"in {summary['out']} ({summary['seconds']} s"
                f"{f', {processes} processes' if processes > 1 else ''})")
    fidelity = summary.get("fidelity")
    lines = [head, f"images: {summary.get('images')}  complete: {summary.get('complete')}"]
    if summary.get("damaged"):
        lines.append("regenerated damaged shard(s): " + ", ".join(
            f"{name} ({problem})" for name, problem in summary["damaged"].items()))
    if fidelity is not None:
        lines.append(f"teacher fidelity (agreement with target labels): {fidelity:.3f}")
        if summary.get("low_fidelity"):
            lines.append("LOW FIDELITY: the teacher does not see the target classes in these images; "
                         "see the warning above before training on them")
    return lines
