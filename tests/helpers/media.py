"""Test media made on the spot with ffmpeg (no files are committed for tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_video(
    path: Path,
    duration: float = 4.0,
    size: str = "320x240",
    rate: str = "25",
    vfr: bool = False,
    audio: bool = False,
) -> Path:
    """An H.264 MP4 of ffmpeg's `testsrc2` pattern. `rate` may be a fraction (24000/1001);
    `vfr=True` drops frames irregularly and keeps their real timestamps (variable frame rate)."""
    src = f"testsrc2=s={size}:r={rate}:d={duration}"
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", src]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=f=440:d={duration}", "-c:a", "aac", "-shortest"]
    vf = []
    if vfr:
        # keep 2 of every 3 frames, plus a longer hole in the middle: timestamps stay real.
        vf.append("select='not(eq(mod(n\\,3)\\,2))*not(between(t\\,1.0\\,1.5))'")
    if vf:
        cmd += ["-vf", ",".join(vf)]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if vfr:
        cmd += ["-fps_mode", "vfr"]
    cmd.append(str(path))
    subprocess.run(cmd, check=True)
    return path


def make_audio_only(path: Path, duration: float = 2.0) -> Path:
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"sine=f=440:d={duration}"]
    subprocess.run(cmd + ["-c:a", "aac", str(path)], check=True)
    return path
