"""How much does `locomad` cost before it does anything: help screens and the first frame.

Times, as a user runs them (fresh processes), interleaved round by round so a change in the
machine's load hits every case alike, and prints medians with the difference to and the ratio
against `python -c pass` measured in the same rounds:
  1. `python -c pass` (the interpreter's own start-up, the floor);
  2. `locomad --help` and `locomad CMD --help` for every command and `demo` subcommand;
  3. `locomad extract-features FILM --model CARD`: process start → first frame decoded (decord
     returns its first frames; a small shim in the child notes the moment) and the whole run.

    .venv/bin/python benchmarks/startup.py                       # demo film, demo card
    .venv/bin/python benchmarks/startup.py --rounds 7 --film F.mkv --model opt-2.7b
    .venv/bin/python benchmarks/startup.py --no-extract          # help screens only
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
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


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def first_frame(film: str, model: str, out_dir: str) -> tuple[float, float]:
    """(seconds from process start to the first decoded frame, seconds for the whole run)."""
    cmd = [PY, "-c", SHIM, "extract-features", film, "--model", model]
    cmd += ["--out-dir", out_dir, "--overwrite", "--quiet"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
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
    args = ap.parse_args()

    cases = {"python -c pass": [PY, "-c", "pass"]}
    for c in help_commands():
        cases[" ".join(["locomad", *c, "--help"])] = [LOCOMAD, *c, "--help"]
    times: dict[str, list[float]] = {k: [] for k in cases}
    frames: list[tuple[float, float]] = []
    print(f"load average before: {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="locomad-startup-") as tmp:
        for r in range(max(args.rounds, 0 if args.no_extract else args.extract_rounds)):
            if r < args.rounds:
                for name, cmd in cases.items():
                    times[name].append(wall(cmd))
            if not args.no_extract and r < args.extract_rounds:
                times["python -c pass"].append(wall(cases["python -c pass"]))
                frames.append(first_frame(args.film, args.model, tmp))
    base = statistics.median(times["python -c pass"])
    print(f"load average after: {load()}")
    print(f"{'what':44s} {'median s':>9s} {'- pass s':>9s} {'/ pass':>7s}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:44s} {m:9.3f} {m - base:9.3f} {m / base:7.1f}x")
    if frames:
        ff = statistics.median(f for f, _ in frames)
        whole = statistics.median(t for _, t in frames)
        what = f"extract-features {Path(args.film).name} --model {args.model}"
        print(
            f"{what}: first frame decoded {ff:.2f} s after process start "
            f"({ff - base:.2f} s over pass; runs: {', '.join(f'{f:.2f}' for f, _ in frames)}); "
            f"whole run {whole:.2f} s"
        )


if __name__ == "__main__":
    main()
