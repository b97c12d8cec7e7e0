"""The CPU thread rule under a competing job: one synthesis unit's wall time, idle and beside a busy process.

    python bench/threads.py [--iterations 60] [--repeats 3] [--rules all,passive,idle]

Each measurement is a fresh process that runs one digits-sized inversion batch (40 images, 16 -> 32 px, the
digits recipe's losses, a randomly initialised dfkd_cnn_digits teacher) after a warm-up batch, and prints
its wall time. Conditions: `idle` (nothing else started by this script) and `busy` (a second process spinning
on one core for the whole measurement). Rules: `all` (threads = all cores, libgomp's default spinning wait;
dfkd's rule before), `passive` (all cores, OMP_WAIT_POLICY=PASSIVE: waiting threads sleep instead of
spinning), `idle` (synth.common.runtime.default_threads, the shipped rule: the cores other processes leave idle,
from /proc/stat, at least 1). Conditions alternate per repeat, so drift hits all alike. The slowdown is
busy / idle; a rule is fair when it stays near the share of CPU lost (cores / (cores - 1)).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from synth.common.runtime import default_threads

WORKLOAD = r"""
import os, sys, time, json
import torch, timm
import synth.teachers.small_cnn
from synth.config import LossWeights, Schedule
from synth.inversion.invert import invert_batch
from synth.teachers.teacher import find_classifier_name, teacher_from_model
threads = int(sys.argv[1]); iterations = int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = timm.create_model("dfkd_cnn_digits", num_classes=10).eval()
teacher = teacher_from_model(model, "timm:dfkd_cnn_digits", (0.5,) * 3, (0.5,) * 3, 32, find_classifier_name(model))
labels = torch.arange(10).repeat_interleave(4)
schedule = Schedule(resolutions=(16, 32), iterations=(iterations, iterations), jitter=1 / 32, flip=False)
invert_batch(teacher, labels, LossWeights(), Schedule(resolutions=(16, 32), iterations=(3, 3)), torch.Generator().manual_seed(0))
start, cpu = time.perf_counter(), time.process_time()
invert_batch(teacher, labels, LossWeights(), schedule, torch.Generator().manual_seed(0))
print(json.dumps({"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu, "threads": threads}))
"""

SPIN = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass\n"


def rule_threads(rule: str, cores: int) -> int:
    """The thread count a rule picks now (`idle` is synth.common.runtime.default_threads, the shipped rule)."""
    return default_threads() if rule == "idle" else cores


def measure(rule: str, cores: int, iterations: int) -> dict:
    """One fresh process running the workload under `rule`."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if rule == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    threads = rule_threads(rule, cores)
    out = subprocess.run(
        [sys.executable, "-c", WORKLOAD, str(threads), str(iterations)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rules", default="all,passive,idle")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    rules = args.rules.split(",")
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):
        for condition in ("idle", "busy"):
            spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if condition == "busy" else None
            try:
                if spinner:
                    time.sleep(2)  # let the load average and the scheduler see it
                for rule in rules:
                    results.setdefault((rule, condition), []).append(measure(rule, cores, args.iterations))
            finally:
                if spinner:
                    spinner.kill()
                    spinner.wait()
    print(f"# thread rules, {cores} cores, {args.iterations}+{args.iterations} iterations, median of {args.repeats}")
    print("| rule | threads idle / busy | wall idle s | wall busy s | slowdown | CPU s busy |")
    print("|---|---|---|---|---|---|")
    for rule in rules:
        idle, busy = results[(rule, "idle")], results[(rule, "busy")]
        wall_idle = statistics.median(r["wall"] for r in idle)
        wall_busy = statistics.median(r["wall"] for r in busy)
        print(
            f"| {rule} | {idle[0]['threads']} / {busy[0]['threads']} | {wall_idle:.2f} | {wall_busy:.2f} | "
            f"{wall_busy / wall_idle:.2f} | {statistics.median(r['cpu'] for r in busy):.2f} |"
        )


if __name__ == "__main__":
    main()
