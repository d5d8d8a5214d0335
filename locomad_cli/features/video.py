"""Video input: a film's facts from one ffprobe run, then frames decoded at exact times.

Frames come from decord. Output frame i shows what is on screen at t_i = i / fps seconds after
the first frame: the decoded frame whose presentation interval contains t_i. Picking "every n-th
frame" instead drifts on 23.976 fps and is wrong on variable-rate video; timestamps are right for
both.

A film has T = floor(duration * fps) output frames: frame i stands for the whole interval
[i / fps, (i + 1) / fps), so only intervals that lie inside the film count.

`probe` and `source_fingerprint` remember their answer for a file while it is unchanged (same
path, inode, size and modification and change times): the stages of one command (describe:
features, speech, shots, the track's film source) each ask for the film's facts, and share one
ffprobe run and one read of its first MiB.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from locomad_cli.utils import LocomadError, tool_path

EPS = 1e-3
"""Seconds of slack when comparing timestamps: decord reports them as float32, which resolves
only about 0.5 ms two hours into a film; no real frame lasts under 8 ms."""


class _Stamp(NamedTuple):
    """What tells that a file is unchanged since it was last read (not its access time,
    which reading it changes)."""

    size: int
    mtime: float
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int


def _stamp(path: Path) -> _Stamp:
    st = path.stat()
    return _Stamp(st.st_size, st.st_mtime, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


@dataclass(frozen=True)
class VideoInfo:
    """A film's facts from one ffprobe run, checked to be a decodable video: its picture, its
    audio streams, and the fingerprint the caches beside it are keyed on."""

    path: Path
    width: int
    height: int
    display_width: int
    """Width after the sample aspect ratio (anamorphic DVDs store 720 wide for 16:9)."""
    display_height: int
    duration: float
    codec: str
    size: int
    mtime: float
    audio: tuple[dict, ...] = ()
    """ffprobe's audio streams, in order (empty: a silent film)."""
    fingerprint: dict[str, str] = field(default_factory=dict, repr=False)
    """source_fingerprint of the file as probed: what the caches beside it are keyed on."""
    rotation: int = 0
    """Degrees the player turns the stored picture (a phone's `rotate` tag or display matrix):
    the display size above is the upright one, and frames are decoded upright at it."""


def _rotation(stream: dict) -> int:
    """The stream's rotation in degrees (0, 90, 180, 270) from ffprobe's display-matrix side
    data or the older `rotate` tag."""
    for side in stream.get("side_data_list") or []:
        r = _float(side.get("rotation"))
        if r is not None:
            return round(r) % 360
    r = _float((stream.get("tags") or {}).get("rotate"))
    return round(r) % 360 if r is not None else 0


def _ffprobe_error(path: Path, stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    last = lines[-1] if lines else "ffprobe failed"
    return last.replace(f"{path}: ", "")


def probe(path: str | Path) -> VideoInfo:
    """Check that `path` is a non-empty file with a video stream and a positive duration."""
    path = Path(path)
    if not path.exists():
        raise LocomadError(f"{path}: no such file")
    if not path.is_file():
        raise LocomadError(f"{path}: not a file")
    stamp = _stamp(path)
    if stamp.size == 0:
        raise LocomadError(f"{path}: empty file (0 bytes)")
    return _probe(path, stamp)


@functools.lru_cache(maxsize=64)
def _probe(path: Path, stamp: _Stamp) -> VideoInfo:
    """One ffprobe run for the file as `stamp` saw it (errors are not remembered)."""
    import ffmpeg

    try:
        info = ffmpeg.probe(tool_path(path))
    except FileNotFoundError:
        raise LocomadError("ffprobe not found: install ffmpeg (apt-get install ffmpeg)") from None
    except ffmpeg.Error as e:
        reason = _ffprobe_error(path, e.stderr or b"")
        raise LocomadError(f"{path}: not a readable video ({reason})") from None
    streams = info.get("streams", [])
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
    ]
    if not videos:
        kinds = sorted({s.get("codec_type", "?") for s in streams})
        what = f"only {', '.join(kinds)} streams" if kinds else "no streams"
        raise LocomadError(f"{path}: no video stream ({what})")
    v = videos[0]
    width, height = int(v.get("width") or 0), int(v.get("height") or 0)
    if width <= 0 or height <= 0:
        raise LocomadError(f"{path}: video stream has no frame size")
    duration = _float(v.get("duration")) or _float(info.get("format", {}).get("duration"))
    if not duration or duration <= 0:
        raise LocomadError(f"{path}: zero-length video")
    sar = _ratio(v.get("sample_aspect_ratio"))
    display_width = max(1, round(width * sar)) if sar else width
    display_height, rotation = height, _rotation(v)
    if rotation % 180 == 90:  # the decoder turns it upright: decode at the upright size
        display_width, display_height = display_height, display_width
    return VideoInfo(
        path=path,
        width=width,
        height=height,
        display_width=display_width,
        display_height=display_height,
        duration=duration,
        codec=str(v.get("codec_name", "?")),
        size=stamp.size,
        mtime=stamp.mtime,
        audio=tuple(s for s in streams if s.get("codec_type") == "audio"),
        fingerprint=dict(_fingerprint(path, stamp)),
        rotation=rotation,
    )


def _float(value: object) -> float | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _ratio(value: object) -> float | None:
    if not isinstance(value, str) or ":" not in value:
        return None
    num, den = value.split(":", 1)
    try:
        r = Fraction(int(num), int(den))
    except (ValueError, ZeroDivisionError):
        return None
    return float(r) if r > 0 else None


def decode_size(info: VideoInfo, short_side: int) -> tuple[int, int]:
    """(width, height) to decode at: the shortest displayed side becomes `short_side`, aspect
    kept, so CLIP's own resize is then a no-op and only its center crop remains."""
    w, h = info.display_width, info.display_height
    if w <= h:
        return short_side, max(short_side, round(h * short_side / w))
    return max(short_side, round(w * short_side / h)), short_side


def frame_count(duration: float, fps: float) -> int:
    """T = floor(duration * fps): only whole 1/fps intervals inside the film."""
    return int(math.floor(duration * fps + EPS))


def sample_indices(starts: np.ndarray, fps: float, count: int) -> np.ndarray:
    """For t_i = i / fps (seconds after the first frame's start), the index of the frame on
    screen at t_i: the last frame whose start is <= t_i. `starts` must be sorted."""
    times = np.arange(count, dtype=np.float64) / fps + starts[0]
    idx = np.searchsorted(starts, times + EPS, side="right") - 1
    return np.clip(idx, 0, len(starts) - 1)


@dataclass
class FramePlan:
    """Which decoded frames make the film's T output frames, and at what size."""

    info: VideoInfo
    fps: float
    width: int
    height: int
    duration: float
    """Seconds from the first frame's start to the last frame's end (decord's timestamps)."""
    indices: np.ndarray
    """Decoded-frame index for every output frame, non-decreasing."""
    reader: Any = field(default=None, repr=False, compare=False)
    """The decord reader opened while planning, reused for decoding (opening one reads the
    container's whole index again)."""
    keyframes: np.ndarray | None = field(default=None, repr=False, compare=False)
    """decord's keyframe positions (its own numbering, as its seeks use them): where a decoder
    may start (locomad_cli/features/parallel.py)."""

    @property
    def frames(self) -> int:
        return len(self.indices)


def _open_reader(path: Path, width: int, height: int, threads: int = 0):  # -> VideoReader
    """A decord reader scaling to width x height; `threads`: libavcodec's decoder threads (0:
    its own choice, frame threads for every core and one more)."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # libav chatter would break one-line errors
    try:
        return decord.VideoReader(
            str(path), ctx=decord.cpu(0), width=width, height=height, num_threads=threads
        )
    except Exception as e:  # decord raises RuntimeError or DECORDError with C++ context
        raise LocomadError(
            f"{path}: cannot decode the video, the file is truncated or corrupt ({_first_line(e)})"
        ) from None


def _first_line(e: Exception) -> str:
    """decord's message without its C++ log prefix ('[12:00:00] /src/x.cc:486: Error: ')."""
    text = str(e).strip().splitlines()
    line = text[-1] if text else e.__class__.__name__
    return re.sub(r"^\[[\d:]+\] \S+:\d+: (Error: )?", "", line)[:200]


def _working_size(info: VideoInfo, short_side: int):  # -> (width, height, VideoReader)
    """decord 0.6 fails on some exact scale ratios (96 → 48 wide: 'The size must exactly
    match'), a bug in its frame copy; nudging the long side by a pixel avoids it at no visible
    cost. Decoding the first frame here finds out before any real work starts."""
    width, height = decode_size(info, short_side)
    first_error: Exception | None = None
    for delta in (0, 1, -1, 2):
        w, h = (width + delta, height) if width >= height else (width, height + delta)
        reader = _open_reader(info.path, w, h)
        try:
            frame = reader.get_batch([0]).asnumpy()
        except Exception as e:
            first_error = first_error or e
            continue
        if frame.shape[1:3] == (h, w):
            reader.seek(0)
            return w, h, reader
    raise LocomadError(
        f"{info.path}: cannot decode the video, the file is truncated or corrupt "
        f"({_first_line(first_error) if first_error else 'wrong frame size'})"
    )


def plan_frames(info: VideoInfo, fps: float, short_side: int) -> FramePlan:
    """Read the container's frame timestamps and choose the frame for every t_i = i / fps."""
    if fps <= 0:
        raise LocomadError(f"fps must be positive, got {fps}")
    width, height, reader = _working_size(info, short_side)
    n = len(reader)
    if n == 0:
        raise LocomadError(f"{info.path}: video stream has no frames")
    stamps = np.asarray(reader.get_frame_timestamp(np.arange(n)), dtype=np.float64)
    starts = stamps[:, 0]
    order_ok = bool(np.all(np.diff(starts) >= 0))
    if not order_ok:  # never seen from decord, but searchsorted needs sorted starts
        starts = np.maximum.accumulate(starts)
    duration = float(stamps[-1, 1] - starts[0])
    if duration <= 0:
        duration = info.duration
    count = frame_count(duration, fps)
    if count == 0:
        raise LocomadError(
            f"{info.path}: video is {duration:.3f} s long, shorter than one frame at {fps:g} FPS"
        )
    indices = sample_indices(starts, fps, count)
    keys = np.asarray(reader.get_key_indices(), dtype=np.int64)
    return FramePlan(info, fps, width, height, duration, indices, reader, keys)


def film_keyframes(plan: FramePlan) -> np.ndarray:
    """The plan's keyframe positions, read from the film when the plan does not hold them."""
    if plan.keyframes is None:
        reader = plan.reader or _open_reader(plan.info.path, plan.width, plan.height)
        plan.keyframes = np.asarray(reader.get_key_indices(), dtype=np.int64)
    return plan.keyframes


def iter_chunks(
    plan: FramePlan, chunk_frames: int, skip: set[int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (chunk number, uint8 frames [n, H, W, 3]) for each chunk of `chunk_frames` output
    frames, in order, skipping chunk numbers in `skip` (already done). Only one chunk is in
    memory at a time: a 2-hour film streams through."""
    skip = skip or set()
    reader = plan.reader or _open_reader(plan.info.path, plan.width, plan.height)
    n_chunks = math.ceil(plan.frames / chunk_frames)
    for c in range(n_chunks):
        if c in skip:
            continue
        idx = plan.indices[c * chunk_frames : (c + 1) * chunk_frames]
        yield c, read_frames(reader, plan, idx)


def read_frames(reader, plan: FramePlan, idx: np.ndarray) -> np.ndarray:
    """uint8 [n, H, W, 3] frames `idx` of the plan's film from a decord reader; a decoder
    error is one line naming the time. Duplicate indices (fps above the video's rate) are
    decoded once by decord."""
    try:
        return reader.get_batch(idx.tolist()).asnumpy()
    except Exception as e:
        raise LocomadError(
            f"{plan.info.path}: decoding failed near {idx[0] / plan.fps:.1f} s, the file is "
            f"truncated or corrupt ({_first_line(e)})"
        ) from None


def source_fingerprint(path: str | Path) -> dict[str, str]:
    """Size, mtime and SHA-256 of the first MiB: cheap, and enough to notice a changed film."""
    path = Path(path)
    return dict(_fingerprint(path, _stamp(path)))


@functools.lru_cache(maxsize=64)
def _fingerprint(path: Path, stamp: _Stamp) -> dict[str, str]:
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read(1 << 20)).hexdigest()
    return {
        "source_size": str(stamp.size),
        "source_mtime": f"{stamp.mtime:.6f}",
        "source_sha256_1mib": digest,
        "source_name": os.path.basename(path),
    }
