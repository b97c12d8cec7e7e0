"""Byte identity of a small fixed pipeline: the sha256 of every file it writes, to compare two commits.

    python bench/byte_identity.py --out /tmp/dfkd-identity > before.json     # at one commit
    python bench/byte_identity.py --out /tmp/dfkd-identity > after.json      # at another, the SAME --out
    diff before.json after.json

The fixture, all at one thread on the CPU: `dfkd train-teacher --epochs 1` (the digits), `dfkd synthesize --config
digits` with 40 images at 5 + 5 iterations, then two 2-epoch `dfkd distill` runs on those shards (function matching;
hard distillation with one stage-1 epoch, so stage 2 runs too). The teacher's path is part of the shard config, so
both commits must use the same --out (the folder is emptied first). The manifest's timestamps are left out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

CPU = ["--threads", "1", "--device", "cpu"]


def dfkd(*args: str) -> None:
    """Run one dfkd command; stop with its error output if it fails."""
    done = subprocess.run([sys.executable, "-m", "dfkd", *args, "--quiet"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"dfkd {' '.join(args)} failed:\n{done.stderr}")


def digest(path: Path) -> str:
    """sha256 of a file; for manifest.json, of its content without the timestamps."""
    if path.name == "manifest.json":
        manifest = json.loads(path.read_text())
        for key in ("created", "updated"):
            manifest.pop(key, None)
        return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="fixture folder (emptied first; the same for both commits)")
    out = Path(parser.parse_args().out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    teacher, shards = out / "teacher.pt", out / "shards"
    dfkd("train-teacher", "--epochs", "1", "--out", str(teacher), "--threads", "1")
    small = ["--per-class", "4", "--iterations", "5,5", "--lowres", "1"]
    dfkd("synthesize", "--config", "digits", "--teacher", str(teacher), *small, *CPU, "--out", str(shards))
    common = ["--config", "digits", "--shards", str(shards), "--teacher", str(teacher), "--epochs", "2", *CPU]
    dfkd("distill", *common, "--distillation", "function_matching", "--out", str(out / "fm"))
    dfkd("distill", *common, "--distillation", "hard", "--stage1-epochs", "1", "--out", str(out / "hard"))
    files = [teacher, *sorted(shards.glob("shard-*.h5")), shards / "manifest.json"]
    files += [out / run / "student.pth" for run in ("fm", "hard")]
    print(json.dumps({str(p.relative_to(out)): digest(p) for p in files}, indent=2))


if __name__ == "__main__":
    main()
