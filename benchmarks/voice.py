"""How fast is `locomad voice`, against what it cannot avoid doing?

On one film with programme audio and an AD track of N descriptions, prints seconds for:
  1. voice, cold (every description synthesized: fitting, stem, ducking, loudness, mux);
  2. voice, warm (the same run again: the speech cache answers, only mixing and delivery);
  3. the baseline: espeak-ng speaking each description once, plus ffmpeg decoding the
     programme and encoding it to AAC once (the least any voicing tool must do);
and the ratios (1)/(3) and (2)/(3), and seconds per minute of film.

    .venv/bin/python benchmarks/voice.py                 # 5 min testsrc2 + pink noise, 60 cues
    .venv/bin/python benchmarks/voice.py --minutes 20 --cues 240
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locomad_cli import __version__  # noqa: E402
from locomad_cli.features.video import source_fingerprint  # noqa: E402
from locomad_cli.voice.fit import VoiceOptions, voice  # noqa: E402

WORDS = "a man in a blue coat walks slowly across the quiet kitchen and looks at the door".split()


def make_film(path: Path, seconds: float) -> None:
    cmd = [
        "ffmpeg",
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=s=320x240:r=25:d={seconds}",
    ]
    cmd += ["-f", "lavfi", "-i", f"anoisesrc=c=pink:r=48000:a=0.05:d={seconds}"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    subprocess.run([*cmd, "-c:a", "aac", "-ac", "2", "-shortest", str(path)], check=True)


def make_track(film: Path, seconds: float, cues: int) -> dict:
    step = seconds / cues
    slots = []
    for i in range(cues):
        n = 4 + i % 9  # 4 to 12 words: some fit, some are sped up, some do not fit
        text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n)).capitalize() + "."
        start = round(i * step + 0.5, 3)
        slots.append(
            {
                "index": i,
                "start": start,
                "end": round(start + min(3.5, step - 1.0), 3),
                "text": text,
                "candidates": [{"text": text, "score": -0.2}, {"text": "He waits.", "score": -0.3}],
            }
        )
    fp = source_fingerprint(film)
    return {
        "film": film.stem,
        "tool": "locomad",
        "version": __version__,
        "card": "bench",
        "setting": "recurrent",
        "film_source": {k: fp[k] for k in ("source_name", "source_size", "source_sha256_1mib")},
        "slots": slots,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--cues", type=int, default=60)
    args = ap.parse_args()
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="locomad-bench-voice-") as tmp:
        tmp = Path(tmp)
        film = tmp / "film.mp4"
        make_film(film, seconds)
        track = make_track(film, seconds, args.cues)
        ad = tmp / "film.ad.json"
        ad.write_text(json.dumps(track))
        opts = VoiceOptions(ad=str(ad), output_dir=str(tmp / "out"), progress=False)

        t = time.perf_counter()
        voiced, _ = voice(film, opts)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        voice(film, opts)
        warm = time.perf_counter() - t

        t = time.perf_counter()
        for s in track["slots"]:
            wav = tmp / "say.wav"
            subprocess.run(["espeak-ng", "-w", str(wav), s["text"]], check=True)
        cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(film), "-map", "0:a", "-c:a", "aac"]
        subprocess.run([*cmd, str(tmp / "programme.m4a")], check=True)
        base = time.perf_counter() - t
        shutil.rmtree(tmp / "out", ignore_errors=True)

    print(voiced["voice"]["summary"])
    print(f"film {args.minutes:g} min, {args.cues} descriptions")
    print(f"voice cold   {cold:7.1f} s  ({cold / args.minutes:5.1f} s per film minute)")
    print(f"voice warm   {warm:7.1f} s  ({warm / args.minutes:5.1f} s per film minute)")
    print(f"baseline     {base:7.1f} s  (espeak-ng once per cue + programme decode/encode)")
    print(f"ratio cold/baseline {cold / base:.2f}, warm/baseline {warm / base:.2f}")


if __name__ == "__main__":
    main()
