"""What does `locomad describe` cost beyond its slots? Start-up, and the slot loop's flatness.

Prints, in one run (so that the ratios hold on a machine shared with others):

  1. **start-up**: `locomad describe` as a user runs it, a subprocess from process start to
     files written, on N short films cut from the demo film (`--model demo`, CPU, each film's
     subtitles and AD times beside it, features extracted beforehand so that both sides reuse
     them): N separate calls (`describe FILM --subs .. --ad-times ..`, one model start-up
     each) against one call on their folder (`describe FOLDER`, one start-up); wall and CPU
     seconds (the children's user + system time), what one call saves, and whether both
     wrote the same tracks;
  2. **per-slot cost**: the recurrent loop in-process (model loaded once, features given),
     on the demo film (24 slots) and on the demo film repeated `--long` times (its features,
     subtitles and AD times tiled end to end): the mean seconds per slot once the context
     proposal is full (slot index >= dsm.proposal_len), on the short film, on the long
     film's first and last such slots, the long film's two halves, and their ratios (1.0 =
     flat in film length; the halves, ~90 slots each, are the steadiest figure).

    .venv/bin/python benchmarks/describe.py                 # 4 films of 14 s, demo x8
    .venv/bin/python benchmarks/describe.py --films 6 --long 16
    .venv/bin/python benchmarks/describe.py --skip startup --set llm.avoid_repeats=0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers.demo_cuts import cut_demo  # noqa: E402

from locomad_cli.tracks.readers import read_cues  # noqa: E402

DEMO = ROOT / "demo" / "demo.mp4"
LOCOMAD = [sys.executable, "-m", "locomad_cli"]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one command, which must succeed."""
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall, cpu


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def startup(work: Path, n: int, seconds: float) -> None:
    from locomad_cli.card import load_card
    from locomad_cli.features.extract import extract_features

    folder = work / "films"
    step = (123.0 - seconds) / max(n - 1, 1)
    films = [cut_demo(folder, f"f{i}", round(i * step, 1), seconds) for i in range(n)]
    extract_features(films, load_card("demo"), device="cpu")
    base = ["describe", "--model", "demo", "--device", "cpu", "-q", "-f", "srt,json"]
    separate_wall = separate_cpu = 0.0
    for film in films:
        sidecars = ["--subs", str(film.with_suffix(".srt"))]
        sidecars += ["--ad-times", str(film.with_suffix(".ad-times.srt"))]
        cmd = [*LOCOMAD, *base, str(film), *sidecars, "-o", str(work / "separate")]
        wall, cpu = _timed(cmd)
        separate_wall, separate_cpu = separate_wall + wall, separate_cpu + cpu
    one_wall, one_cpu = _timed([*LOCOMAD, *base, str(folder), "-o", str(work / "one")])
    same = all(
        json.loads((work / "separate" / f"{f.stem}.ad.json").read_text())["slots"]
        == json.loads((work / "one" / f"{f.stem}.ad.json").read_text())["slots"]
        for f in films
    )
    slots = sum(len(read_cues(f.with_suffix(".ad-times.srt"))) for f in films)
    print(f"start-up: {n} films of {seconds:g} s, {slots} slots in all (load {_load()})")
    print(f"  {n} separate calls   {separate_wall:7.1f} s wall  {separate_cpu:7.1f} s CPU")
    print(f"  one call, folder   {one_wall:7.1f} s wall  {one_cpu:7.1f} s CPU")
    print(
        f"  saved by one call  {separate_wall - one_wall:7.1f} s wall  "
        f"{separate_cpu - one_cpu:7.1f} s CPU  "
        f"({(separate_cpu - one_cpu) / (n - 1):.1f} s CPU per film after the first)"
    )
    print(
        f"  separate / one     {separate_wall / one_wall:7.2f}x wall  "
        f"{separate_cpu / one_cpu:7.2f}x CPU; same tracks: {same}"
    )


def _tile(work: Path, times: int) -> tuple[Path, Path, Path]:
    """The demo film's features, subtitles and AD times repeated `times` times end to end."""
    import torch

    from locomad_cli.features.extract import load_features, save_features

    features, meta = load_features(DEMO.with_name("demo.features.safetensors"))
    duration = features.shape[0] / float(meta["fps"])
    tiled = torch.cat([features] * times)
    keys = ("fps", "clip_model", "clip_pretrained", "clip_weights")
    out_meta = {k: str(meta[k]) for k in keys if meta.get(k) is not None}
    out_meta.update(duration=f"{duration * times:.3f}", frames=str(tiled.shape[0]))
    feats = work / f"long{times}.features.safetensors"
    save_features({"features": tiled.contiguous()}, feats, metadata=out_meta)
    paths = []
    for name in ("demo.srt", "demo.ad-times.srt"):
        cues = read_cues(DEMO.with_name(name))
        blocks, i = [], 0
        for k in range(times):
            for c in cues:
                i += 1
                a, b = c.start + k * duration, c.end + k * duration
                blocks.append(f"{i}\n{_ts(a)} --> {_ts(b)}\n{c.text}\n")
        path = work / f"long{times}.{name.split('.', 1)[1]}"
        path.write_text("\n".join(blocks), encoding="utf-8")
        paths.append(path)
    return feats, paths[0], paths[1]


def _ts(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def _slot_times(video: Path, opts, model, encode) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each slot, from one description to the next."""
    from locomad_cli.describe.film import describe

    marks = []
    last = [time.perf_counter(), time.process_time()]

    def tick(row) -> None:
        now = [time.perf_counter(), time.process_time()]
        marks.append((now[0] - last[0], now[1] - last[1]))
        last[:] = now

    describe(video, opts, model=model, encode_text=encode, on_description=tick)
    return marks


def per_slot(work: Path, times: int, overrides: list[str]) -> None:
    import torch

    from locomad_cli.card import load_card
    from locomad_cli.describe.film import DescribeOptions
    from locomad_cli.features.clip import load_clip
    from locomad_cli.model.checkpoint import load_model

    card = load_card("demo", overrides)
    model = load_model(card, device="cpu")
    encode = load_clip(card, "cpu", torch.float32).encode_text
    p = card.dsm.proposal_len

    def opts(features, subs, ad_times, out):
        return DescribeOptions(
            model="demo",
            overrides=list(overrides),
            subs=str(subs),
            ad_times=str(ad_times),
            features=str(features),
            output_dir=str(work / out),
            formats="json",
            device="cpu",
            progress=False,
        )

    demo_dir = DEMO.parent
    short = _slot_times(
        work / "demo.mp4",  # no such file: the features stand alone, as for the long film
        opts(
            demo_dir / "demo.features.safetensors",
            DEMO.with_suffix(".srt"),
            demo_dir / "demo.ad-times.srt",
            "short",
        ),
        model,
        encode,
    )
    feats, subs, ad_times = _tile(work, times)
    long = _slot_times(
        work / f"long{times}.mp4", opts(feats, subs, ad_times, "long"), model, encode
    )

    def mean(rows, i):
        return sum(r[i] for r in rows) / len(rows)

    steady_short = short[p:]
    first, last = long[p : len(short)], long[-len(steady_short) :]
    print(
        f"per slot (recurrent, proposal full from slot {p + 1}; load {_load()}): "
        f"demo film {len(short)} slots, demo x{times} {len(long)} slots"
    )
    for label, rows in (
        (f"demo film, slots {p + 1}-{len(short)}", steady_short),
        (f"demo x{times}, slots {p + 1}-{len(short)}", first),
        (f"demo x{times}, last {len(last)} slots", last),
        (f"demo x{times}, all {len(long)} slots", long),
    ):
        print(f"  {label:32s} {mean(rows, 0):6.3f} s wall  {mean(rows, 1):6.3f} s CPU")
    half = len(long) // 2
    early, late = long[p:half], long[half:]
    print(
        f"  second / first half of the long film  {mean(late, 0) / mean(early, 0):5.2f}x wall  "
        f"{mean(late, 1) / mean(early, 1):5.2f}x CPU (slots {p + 1}-{half} against "
        f"{half + 1}-{len(long)})"
    )
    print(
        f"  last / first of the long film  {mean(last, 0) / mean(first, 0):5.2f}x wall  "
        f"{mean(last, 1) / mean(first, 1):5.2f}x CPU;  long (last) / short  "
        f"{mean(last, 0) / mean(steady_short, 0):5.2f}x wall  "
        f"{mean(last, 1) / mean(steady_short, 1):5.2f}x CPU"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--films", type=int, default=4, help="films for the start-up part (>= 2)")
    ap.add_argument("--seconds", type=float, default=14.0, help="length of each of those films")
    ap.add_argument("--long", type=int, default=8, help="times the demo film is repeated")
    ap.add_argument("--skip", choices=("startup", "slots"), help="leave one part out")
    ap.add_argument(
        "--set", action="append", default=[], help="card override for the per-slot part"
    )
    args = ap.parse_args()
    if args.films < 2 or args.long < 2:
        sys.exit("--films and --long must be at least 2")
    work = Path(tempfile.mkdtemp(prefix="locomad-bench-describe-"))
    try:
        print(f"cpus {os.cpu_count()}, load {_load()} at the start")
        if args.skip != "startup":
            startup(work, args.films, args.seconds)
        if args.skip != "slots":
            per_slot(work, args.long, args.set)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
