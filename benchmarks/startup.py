"""How much does `locomad` cost before it does anything: help screens and the first frame.

Times, as a user runs them (fresh processes), interleaved round by round (in a shuffled order)
so a change in the machine's load hits every case alike, and prints medians with the difference
to and the ratio against `python -c pass` measured in the same rounds:
  1. `python -c pass` (the interpreter's own start-up, the floor);
  2. `locomad --help` and `locomad CMD --help` for every command and `demo` subcommand;
  3. `locomad extract-features FILM --model CARD`: process start → first frame decoded (decord
     returns its first frames; a small shim in the child notes the moment) and the whole run.

    .venv/bin/python benchmarks/startup.py                       # demo film, demo card
    .venv/bin/python benchmarks/startup.py --rounds 7 --film F.mkv --model opt-2.7b
    .venv/bin/python benchmarks/startup.py --no-extract          # help screens only
    .venv/bin/python benchmarks/startup.py --also /tmp/old       # and an older tree beside it
    .venv/bin/python benchmarks/startup.py --imports --no-extract # what the imports cost
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
LOCOMAD = str(Path(PY).with_name("locomad"))

# Runs the CLI as the console script does, after wrapping decord's frame reads so the first one
# prints the wall clock. decord is imported here a little earlier than the command would (it
# must be, to decode a frame); everything else loads as in a plain run.
SHIM = """
import sys, time
import decord
def _wrap(name):
    orig = getattr(decord.VideoReader, name)
    def read(self, *a, **k):
        out = orig(self, *a, **k)
        if not getattr(decord, "_seen", False):
            decord._seen = True
            print(f"FIRST_FRAME {time.time():.6f}", file=sys.stderr, flush=True)
        return out
    setattr(decord.VideoReader, name, read)
for _n in ("get_batch", "__getitem__", "next"):
    _wrap(_n)
sys.argv[0] = "locomad"
from locomad_cli.cli import main
main()
"""


@dataclass
class Tree:
    """Which source tree a child runs: its environment (None: ours) and folder."""

    env: dict[str, str] | None
    cwd: str


def help_commands() -> list[list[str]]:
    """[] (the root), every command, every `demo` subcommand: what `--help` is timed for."""
    import typer.main

    from locomad_cli.cli import app

    root = typer.main.get_command(app)
    out: list[list[str]] = [[]]
    for name, cmd in sorted(root.commands.items()):
        out.append([name])
        for sub in sorted(getattr(cmd, "commands", {}) or {}):
            out.append([name, sub])
    return out


IMPORTS = [
    "numpy",
    "torch",
    "torch, torchvision",
    "torch, transformers",
    "torch, torchvision, timm",
    "open_clip",
    "open_clip, decord",
]
"""What extract-features' CLIP loads: open_clip imports torchvision (torch._dynamo with it),
transformers and timm whatever the model."""


def wall(cmd: list[str], tree: Tree) -> float:
    start = time.perf_counter()
    out = subprocess.DEVNULL
    subprocess.run(cmd, stdout=out, stderr=out, check=True, env=tree.env, cwd=tree.cwd)
    return time.perf_counter() - start


def first_frame(film: str, model: str, out_dir: str, tree: Tree) -> tuple[float, float]:
    """(seconds from process start to the first decoded frame, seconds for the whole run)."""
    cmd = [PY, "-c", SHIM, "extract-features", film, "--model", model]
    cmd += ["--out-dir", out_dir, "--overwrite", "--quiet"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=tree.env, cwd=tree.cwd)
    total = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"extract-features failed: {proc.stderr.strip()[-500:]}")
    stamps = [float(ln.split()[1]) for ln in proc.stderr.splitlines() if ln.startswith("FIRST_")]
    if not stamps:
        raise SystemExit("no frame was decoded through decord")
    return stamps[0] - t0, total


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="help-screen rounds (default 5)")
    ap.add_argument("--extract-rounds", type=int, default=3, help="first-frame runs (default 3)")
    ap.add_argument("--film", default=str(REPO / "demo" / "demo.mp4"))
    ap.add_argument("--model", default="demo")
    ap.add_argument("--no-extract", action="store_true", help="help screens only")
    ap.add_argument(
        "--imports",
        action="store_true",
        help="also time `python -c 'import X'` for what the CLIP path loads (torch, then "
        "torchvision, transformers, timm and open_clip on top of it)",
    )
    ap.add_argument(
        "--also",
        metavar="DIR",
        help="another source tree (e.g. `git archive OLD locomad_cli | tar -x -C DIR`, with "
        "models/ and weights/ beside it): every case runs with it too, interleaved",
    )
    args = ap.parse_args()

    trees = {"": Tree(None, str(REPO))}
    if args.also:  # `python -c` puts the current folder first on sys.path: run from the tree
        also = str(Path(args.also).resolve())
        trees[f" [{args.also}]"] = Tree({**os.environ, "PYTHONPATH": also}, also)
    cases = {"python -c pass": [PY, "-c", "pass"]}
    for c in help_commands():
        cases[" ".join(["locomad", *c, "--help"])] = [LOCOMAD, *c, "--help"]
    if args.imports:
        for mods in IMPORTS:
            cases[f"python -c 'import {mods}'"] = [PY, "-c", f"import {mods}"]
    times: dict[str, list[float]] = {}
    frames: dict[str, list[tuple[float, float]]] = {}
    print(f"load average before: {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="locomad-startup-") as tmp:
        for r in range(max(args.rounds, 0 if args.no_extract else args.extract_rounds)):
            for tag, tree in trees.items():
                if r < args.rounds:
                    order = list(cases.items())
                    random.Random(r).shuffle(order)  # no case always runs first or last
                    for name, cmd in order:
                        ours = name.startswith("locomad")
                        if tag and not ours:
                            continue  # python's own cases once a round
                        key = name + tag if ours else name
                        times.setdefault(key, []).append(wall(cmd, tree))
                if not args.no_extract and r < args.extract_rounds:
                    times["python -c pass"].append(wall(cases["python -c pass"], tree))
                    run = first_frame(args.film, args.model, tmp, tree)
                    frames.setdefault(tag, []).append(run)
            print(f"round {r + 1} done, load {load()}", flush=True)
    base = statistics.median(times["python -c pass"])
    print(f"load average after: {load()}")
    width = max(len(k) for k in times) + 1
    print(f"{'what':{width}s} {'median s':>9s} {'- pass s':>9s} {'/ pass':>7s}")
    for name, ts in sorted(times.items(), key=lambda kv: (kv[0] != "python -c pass", kv[0])):
        m = statistics.median(ts)
        print(f"{name:{width}s} {m:9.3f} {m - base:9.3f} {m / base:7.1f}x")
    for tag, runs in frames.items():
        ff = statistics.median(f for f, _ in runs)
        whole = statistics.median(t for _, t in runs)
        what = f"extract-features {Path(args.film).name} --model {args.model}{tag}"
        print(
            f"{what}: first frame decoded {ff:.2f} s after process start "
            f"({ff - base:.2f} s over pass; runs: {', '.join(f'{f:.2f}' for f, _ in runs)}); "
            f"whole run {whole:.2f} s (runs: {', '.join(f'{t:.2f}' for _, t in runs)})"
        )


if __name__ == "__main__":
    main()
