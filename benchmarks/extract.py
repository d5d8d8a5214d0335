"""How fast is `locomad extract-features`, as a user runs it, against the decode limit?

Times on the same film, round by round and interleaved (a change in the machine's load hits
every case alike), and prints medians of `--repeats` rounds and ratios against ffmpeg measured
in the same rounds:
  1. ffmpeg decode only: the same frames (fps=5) at the same size to raw RGB into a pipe that
     is drained, nothing else: the decode limit, since no extractor can beat its decoder;
  2. the command: `locomad extract-features FILM --model CARD -o DIR` in a fresh process, from
     process start to the features file written (start-up imports, CLIP load, probe,
     planning, decoding, encoding, writes): what a user waits for;
  3. the film loop: extract_film() in this process with the model loaded (what the command
     costs without its start-up), with the default readers and with one reader (the
     sequential path before parallel decoding);
  4. decode only, our readers (parallel.decode_pieces, no encoder), and with each layout of
     `--layouts R:T,...` (R readers of T decoder threads each; 1 reader is the planning
     reader, with libavcodec's own choice of threads);
  5. a naive loop: per frame, decord -> PIL -> open_clip's transform -> encode_image, on the
     first `--naive-frames` frames (0: skipped).
CPU seconds (user + system) are printed beside wall seconds: on a loaded machine the wall
ratio follows each case's share of the cores, the CPU ratio what each case costs.

    .venv/bin/python benchmarks/extract.py                    # 120 s 1280x720 testsrc2, demo card
    .venv/bin/python benchmarks/extract.py FILM.mp4 --model demo --repeats 5
    .venv/bin/python benchmarks/extract.py --seconds 600      # a 10-minute film
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
LOCOMAD = str(Path(sys.executable).with_name("locomad"))


def make_film(path: Path, seconds: float, size: str) -> Path:
    """testsrc2 at 25 fps, H.264 as x264 makes it by default (B-frames, keyframes up to 10 s
    apart)."""
    src = f"testsrc2=s={size}:r=25:d={seconds}"
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", src, "-c:v", "libx264"]
    subprocess.run([*cmd, "-preset", "veryfast", str(path)], check=True)
    return path


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], int]) -> tuple[int, float, float]:
    """(frames, wall seconds, CPU seconds of this process and its children)."""
    cpu, start = _cpu(), time.perf_counter()
    frames = fn()
    return frames, time.perf_counter() - start, _cpu() - cpu


def ffmpeg_decode(film: Path, fps: float, width: int, height: int) -> int:
    """ffmpeg alone: decode, pick frames at `fps`, scale, write raw RGB to a pipe we drain."""
    cmd = ["ffmpeg", "-v", "error", "-i", str(film), "-vf", f"fps={fps:g},scale={width}:{height}"]
    proc = subprocess.Popen([*cmd, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], stdout=PIPE)
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    if proc.wait() != 0:
        raise SystemExit("ffmpeg failed")
    return total // (width * height * 3)


PIPE = subprocess.PIPE


def command(film: Path, model: str, out: Path, extra: list[str]) -> int:
    """The locomad entry point in a fresh process, as a user types it."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [LOCOMAD, "extract-features", str(film), "--model", model, "-o", str(out), "-q"]
    proc = subprocess.run([*cmd, *extra], stdout=PIPE, stderr=PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"locomad failed: {proc.stderr.strip()}")
    from locomad_cli.features.extract import load_features

    return int(load_features(out / f"{film.stem}.features.safetensors")[1]["frames"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("film", nargs="?", help="video file (default: a generated testsrc2 film)")
    ap.add_argument("--model", default="demo", help="model card name or YAML (default: demo)")
    ap.add_argument("--seconds", type=float, default=120.0, help="generated film length (120)")
    ap.add_argument("--size", default="1280x720", help="generated film size (1280x720)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; medians are printed (3)")
    ap.add_argument("--naive-frames", type=int, default=100, help="frames for the naive loop")
    ap.add_argument("--no-loop", action="store_true", help="skip the in-process cases (2 only)")
    ap.add_argument("--layouts", default="", help="decode-only reader layouts, e.g. 1:0,2:1,2:2")
    args = ap.parse_args()

    from locomad_cli.card import load_card
    from locomad_cli.features import parallel
    from locomad_cli.features.clip import load_clip
    from locomad_cli.features.extract import extract_features
    from locomad_cli.features.video import plan_frames, probe
    from locomad_cli.utils import resolve_dtype

    card = load_card(args.model)
    with tempfile.TemporaryDirectory(prefix="locomad-bench-") as tmp_name:
        tmp = Path(tmp_name)
        film = (
            Path(args.film) if args.film else make_film(tmp / "film.mp4", args.seconds, args.size)
        )
        info = probe(film)
        encoder = load_clip(card, args.device, resolve_dtype("auto", args.device))
        plan = plan_frames(info, card.fps, encoder.decode_short_side)
        readers, threads = parallel.default_decoders()
        load_start = os.getloadavg()
        print(
            f"film {film.name}: {info.width}x{info.height} {info.codec}, {info.duration:.1f} s; "
            f"{plan.frames} frames at {card.fps:g} FPS decoded at {plan.width}x{plan.height}; "
            f"card {card.name} on {args.device}; {readers} reader(s) x {threads} thread(s); "
            f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}"
        )
        extra = ["--device", args.device]

        def loop(n_readers: int | None) -> Callable[[], int]:
            def run() -> int:
                policy = parallel.default_decoders
                if n_readers is not None:
                    parallel.default_decoders = lambda cores=None: (n_readers, 0)
                try:
                    res = extract_features(
                        [film], card, out_dir=tmp / "loop", device=args.device, overwrite=True
                    )
                finally:
                    parallel.default_decoders = policy
                loops[n_readers].append(res[0].seconds)
                return res[0].frames

            return run

        def ours(readers: int | None = None, threads: int | None = None) -> Callable[[], int]:
            def run() -> int:
                fresh = plan_frames(info, card.fps, encoder.decode_short_side)
                pieces = parallel.decode_pieces(fresh, 250, readers=readers, threads=threads)
                return sum(len(p.frames) for p in pieces)

            return run

        cases: dict[str, Callable[[], int]] = {
            "ffmpeg decode only": lambda: ffmpeg_decode(film, card.fps, plan.width, plan.height),
            "command (process start to file)": lambda: command(
                film, args.model, tmp / "cmd", extra
            ),
        }
        loops: dict[int | None, list[float]] = {None: [], 1: []}
        if not args.no_loop:
            cases["film loop, default readers"] = loop(None)
            cases["film loop, 1 reader"] = loop(1)
            cases["decode only, our readers"] = ours()
            for layout in filter(None, args.layouts.split(",")):
                r, t = (int(x) for x in layout.split(":"))
                cases[f"decode only, {r} x {t}"] = ours(r, t or None)
        rows: dict[str, list[tuple[int, float, float]]] = {name: [] for name in cases}
        names = list(cases)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
                rows[name].append(timed(cases[name]))
                n, wall, cpu = rows[name][-1]
                line = f"  round {r + 1}: {name:34s} {wall:7.2f} s wall {cpu:7.2f} s CPU"
                print(line, flush=True)
        # the film loop's own clock (extract_film), not the call around it
        for key, name in ((None, "film loop, default readers"), (1, "film loop, 1 reader")):
            if name in rows:
                own = zip(rows[name], loops[key], strict=True)
                rows[name] = [(n, s, c) for (n, _, c), s in own]
        if args.naive_frames > 0 and not args.no_loop:
            rows["naive per-frame loop"] = [timed(lambda: naive(film, card.fps, encoder, args))]
        load_end = os.getloadavg()

    _print_medians(rows, args.repeats, load_end)


def _print_medians(rows: dict[str, list[tuple[int, float, float]]], repeats: int, load_end) -> None:
    """Each case's median speed and CPU time, and its ratio to decoding alone."""
    import torch

    print(f"\nmedians of {repeats} ({torch.__version__}, {os.cpu_count()} cores):")
    med = {}
    for name, runs in rows.items():
        n = runs[0][0]
        wall = statistics.median(w for _, w, _ in runs)
        cpu = statistics.median(c for _, _, c in runs)
        med[name] = (n / wall, cpu)
        print(f"{name:34s} {n:6d} frames {wall:7.2f} s {n / wall:7.1f} frames/s {cpu:7.2f} s CPU")
    limit, limit_cpu = med["ffmpeg decode only"]
    print("ratios to ffmpeg decode only (frames/s; CPU seconds ffmpeg / case):")
    for name, (speed, cpu) in med.items():
        if name != "ffmpeg decode only" and not name.startswith("naive"):
            print(f"  {name:34s} {speed / limit:5.2f}x   CPU {limit_cpu / cpu:5.2f}x")
    print(f"load average at the end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")


def naive(film: Path, fps: float, encoder, args) -> int:
    """What one writes first: every frame alone through PIL and the model (first frames)."""
    import decord
    import torch
    from PIL import Image

    vr = decord.VideoReader(str(film))
    step = vr.get_avg_fps() / fps
    n = min(args.naive_frames, int(len(vr) / step))
    with torch.inference_mode():
        for i in range(n):
            frame = vr[int(i * step)].asnumpy()
            x = encoder.transform(Image.fromarray(frame))[None].to(encoder.device, encoder.dtype)
            encoder.model.encode_image(x)
    return n


if __name__ == "__main__":
    main()
