"""What does listening to a film cost? silero-vad over a 2-hour soundtrack, against ffmpeg.

Prints, on the same film:
  1. `detect_speech()` as `locomad describe` runs it on a film it has not heard yet: ffprobe,
     fingerprint, model load, ffmpeg decoding to 16 kHz mono, silero-vad in batched rows,
     block files, the cache; and again on the cached file;
  2. ffmpeg decoding the same audio to 16 kHz mono s16le into a pipe we drain, nothing else
     (the decode limit);
  3. silero-vad's own one-stream `get_speech_timestamps` on the first `--stream-minutes` of
     the decoded audio, scaled to the film (why the rows run side by side);
and the ratio (1)/(2). The film is synthesized unless given: a 10-minute bed of espeak-ng
lines over pink noise, looped to `--minutes`, as AAC 48 kHz stereo (a film's usual track)
beside a 1 FPS picture.

`--cuts DIR` instead compares the two cut detectors of shots.py on demo films rendered into
DIR (`locomad demo make-data DIR --films N --val 0 --test 1` style layout not needed: any
folder of demo MP4s with their `NAME.world.json` and features from the demo card).

    .venv/bin/python benchmarks/slots.py                    # 2-hour synthesized soundtrack
    .venv/bin/python benchmarks/slots.py --film FILM.mkv    # a film of your own
    .venv/bin/python benchmarks/slots.py --cuts /tmp/films  # PySceneDetect vs CLIP features
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locomad_cli.demo.render import SOUND_RATE, Soundtrack, _write_wav, speak  # noqa: E402
from locomad_cli.slots.speech import SAMPLE_RATE, _ffmpeg_cmd, _load_vad, detect_speech  # noqa: E402

LINES = [
    "Where were you last night?",
    "I told you already, I was at home.",
    "Nobody saw you there.",
    "Then ask my sister.",
    "Keep your voice down.",
    "The train leaves at six.",
    "Did you hear that?",
    "Not again.",
]


def make_film(path: Path, minutes: float) -> Path:
    """A film with `minutes` of soundtrack: lines every few seconds over pink noise."""
    rng = np.random.default_rng(0)
    base_s = 600
    n = base_s * SOUND_RATE
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / np.sqrt(np.arange(n // 2 + 1) + 1))
    out = (noise * 10 ** (-40 / 20) / noise.std()).astype(np.float32)
    voices = ["en+m3", "en+f2", "en+m1", "en+f4"]
    t = 1.0
    while t < base_s - 5:
        speech = speak(str(rng.choice(LINES)), str(rng.choice(voices)), int(rng.integers(30, 70)))
        a = int(t * SOUND_RATE)
        out[a : a + len(speech)] += speech[: n - a]
        t += len(speech) / SOUND_RATE + float(rng.uniform(1.0, 8.0))
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "bed.wav"
        _write_wav(Soundtrack(np.clip(out, -1, 1), SOUND_RATE, []), wav)
        loops = int(np.ceil(minutes * 60 / base_s)) - 1
        cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i"]
        cmd += [f"color=c=gray:s=64x48:r=1:d={minutes * 60:g}"]
        cmd += ["-stream_loop", str(loops), "-i", str(wav), "-t", f"{minutes * 60:g}"]
        cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
        cmd += ["-c:a", "aac", "-ac", "2", "-ar", "48000", "-b:a", "128k", str(path)]
        subprocess.run(cmd, check=True)
    return path


def ffmpeg_decode(film: Path) -> tuple[float, float]:
    """(seconds of audio, wall seconds) for ffmpeg alone decoding to 16 kHz mono."""
    start = time.perf_counter()
    proc = subprocess.Popen(_ffmpeg_cmd(film, 0), stdout=subprocess.PIPE)
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    proc.wait()
    return total / 2 / SAMPLE_RATE, time.perf_counter() - start


def one_stream(film: Path, minutes: float) -> float:
    """Wall seconds of silero-vad's get_speech_timestamps on the first `minutes`."""
    import torch
    from silero_vad import get_speech_timestamps

    cmd = _ffmpeg_cmd(film, 0)
    cmd.insert(cmd.index("-i"), "-t")
    cmd.insert(cmd.index("-i"), f"{minutes * 60:g}")
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    wav = torch.from_numpy(np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768)
    model = _load_vad()
    start = time.perf_counter()
    get_speech_timestamps(wav, model, sampling_rate=SAMPLE_RATE)
    return time.perf_counter() - start


def bench_vad(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="locomad-bench-") as tmp:
        film = Path(args.film) if args.film else Path(args.keep or tmp) / "two-hours.mp4"
        if not film.exists():
            t0 = time.perf_counter()
            make_film(film, args.minutes)
            print(f"synthesized {film} ({args.minutes:g} min) in {time.perf_counter() - t0:.0f} s")
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        seconds, decode_s = ffmpeg_decode(film)
        out = Path(tmp) / "cache"
        t0 = time.perf_counter()
        speech = detect_speech(film, out)
        call_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached = detect_speech(film, out)
        cached_s = time.perf_counter() - t0
        stream_s = one_stream(film, args.stream_minutes) * seconds / (args.stream_minutes * 60)
        print(f"audio: {seconds / 60:.1f} min, {len(speech.intervals)} speech intervals")
        print(f"ffmpeg decode only:          {decode_s:7.1f} s")
        print(f"detect_speech (first time):  {call_s:7.1f} s   ({speech.status})")
        print(f"detect_speech (cached):      {cached_s:7.1f} s   ({cached.status})")
        print(
            f"one-stream silero, scaled:   {stream_s:7.1f} s   (from {args.stream_minutes:g} min)"
        )
        print(f"detect_speech / ffmpeg decode: {call_s / decode_s:.2f}x")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


def bench_cuts(folder: Path, tolerance: float = 0.3) -> None:
    """Precision and recall of both detectors against the films' place changes."""
    from locomad_cli.features.extract import load_features
    from locomad_cli.slots.shots import cuts_from_features, detect_cuts

    counts = {"pyscenedetect": [0, 0, 0], "clip-features": [0, 0, 0]}
    seconds = {"pyscenedetect": 0.0, "clip-features": 0.0}
    for mp4 in sorted(folder.rglob("*.mp4")):
        world = json.loads(mp4.with_name(mp4.stem + ".world.json").read_text())
        truth, loc = [], 0
        for s in world["slots"]:
            if s["action"]["kind"] == "establish":
                if s["action"]["location"] != loc:
                    truth.append(s["start"])
                loc = s["action"]["location"]
        feats, meta = load_features(mp4.with_name(mp4.stem + ".features.safetensors"))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            found = {"pyscenedetect": detect_cuts(mp4, tmp).cuts}
            seconds["pyscenedetect"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        found["clip-features"] = cuts_from_features(feats.float().numpy(), float(meta["fps"]))
        seconds["clip-features"] += time.perf_counter() - t0
        for name, cuts in found.items():
            hit = sum(any(abs(c - x) <= tolerance for x in cuts) for c in truth)
            false = sum(not any(abs(c - x) <= tolerance for c in truth) for x in cuts)
            counts[name][0] += hit
            counts[name][1] += len(truth) - hit
            counts[name][2] += false
    for name, (tp, fn, fp) in counts.items():
        p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        print(
            f"{name:14s} found {tp}/{tp + fn} cuts, {fp} false: precision {p:.3f} recall {r:.3f}"
            f" ({seconds[name]:.1f} s)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--film", help="A film of your own (default: synthesize one)")
    ap.add_argument("--minutes", type=float, default=120.0, help="Synthesized length")
    ap.add_argument("--keep", help="Folder to keep the synthesized film in (reused next time)")
    ap.add_argument("--stream-minutes", type=float, default=10.0)
    ap.add_argument("--cuts", help="Folder of demo films: compare the cut detectors instead")
    args = ap.parse_args()
    if args.cuts:
        bench_cuts(Path(args.cuts))
    else:
        bench_vad(args)


if __name__ == "__main__":
    main()
