"""Decode a planned film with several decord readers at once, frames identical to iter_chunks'.

Decoding is what bounds extract-features (93 % of its film loop), and one reader leaves cores
idle: its calls wait on each other (read a packet, decode it, convert it) and it flushes and
restarts its decoder at every keyframe it jumps to. Several readers, each over its own spans of
the film, keep every core busy.

Exactness: decord's sequential reader already flushes its decoder and seeks to a keyframe
wherever the next wanted frame lies past the next keyframe (VideoReader::SeekAccurate). Spans
start only at such output frames (`seek_points`), so a reader starting a span makes the very
calls the sequential reader makes there, from the same flushed state, and decodes the same
pixels. A film with no such point (dense sampling, one keyframe) is one span: one reader.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from locomad_cli.features.video import FramePlan, _open_reader, film_keyframes, read_frames

SPANS_PER_DECODER = 4
"""Spans handed to each reader, on average: enough that readers finishing early take more (the
film's end does not wait on one reader), few enough that each reads a long stretch."""


PIECE_FRAMES = 64
"""Output frames a reader decodes in one call: 2 x readers + 2 pieces are in memory at most
(17 MB each for ViT-L/14's 398x224 frames), where whole chunks would be 67 MB each."""


@dataclass(frozen=True)
class Piece:
    """Decoded output frames [offset, offset + n) of chunk `chunk`: a chunk may come in several
    pieces, from different readers, in any order."""

    chunk: int
    offset: int
    frames: np.ndarray


def default_decoders(cores: int | None = None) -> tuple[int, int]:
    """(readers, decoder threads each) for `cores` cores (default: this process's): a reader
    per core, at most 8, of 2 threads each. On 2 cores, 2 readers x 2 threads decoded a 720p
    film 1.16-1.43x as fast as ffmpeg alone, for about its CPU, where one reader with
    libavcodec's own choice of threads reached 0.64-0.97x and single-threaded readers
    0.68-1.04x: a single-threaded reader waits on itself (docs/performance.md)."""
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
    return max(1, min(cores, 8)), 2


def seek_points(indices: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Output frames i > 0 where decord's sequential reader, having decoded indices[i - 1],
    flushes its decoder and seeks to a keyframe to reach indices[i]: it does when the wanted
    frame lies beyond the next one and under another keyframe (LocateKeyframe: the last
    keyframe at or before a frame, 0 up to the first one). A repeated index (fps above the
    film's rate) is copied, not decoded, so it is never a seek point."""
    if len(indices) < 2 or len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    keys = np.sort(np.asarray(keys, dtype=np.int64))

    def locate(x: np.ndarray) -> np.ndarray:
        k = keys[np.clip(np.searchsorted(keys, x, side="right") - 1, 0, None)]
        return np.where(x <= keys[0], 0, k)

    after = indices[:-1].astype(np.int64) + 1  # where the reader stands after frame i - 1
    wanted = indices[1:].astype(np.int64)
    seeks = (wanted > after) & (locate(wanted) != locate(after))
    return np.nonzero(seeks)[0] + 1


def plan_spans(
    plan: FramePlan, chunk_frames: int, skip: set[int], readers: int
) -> list[tuple[int, int]]:
    """[start, stop) output-frame spans covering the chunks not in `skip`, in film order, each
    starting where the sequential reader seeks (or where a skipped stretch ends, as there)."""
    total = plan.frames
    todo = [c for c in range(math.ceil(total / chunk_frames)) if c not in skip]
    runs: list[list[int]] = []  # maximal stretches of to-do chunks, as [start, stop)
    for c in todo:
        start, stop = c * chunk_frames, min(total, (c + 1) * chunk_frames)
        if runs and runs[-1][1] == start:
            runs[-1][1] = stop
        else:
            runs.append([start, stop])
    frames = sum(b - a for a, b in runs)
    if not frames:
        return []
    target = max(1, math.ceil(frames / (readers * SPANS_PER_DECODER)))
    points = seek_points(plan.indices, film_keyframes(plan)) if readers > 1 else []
    spans = []
    for a, b in runs:
        start = a
        for p in points:
            if start + target <= p < b:
                spans.append((start, int(p)))
                start = int(p)
        spans.append((start, b))
    return spans


def _pieces(
    span: tuple[int, int], chunk_frames: int, piece_frames: int, indices: np.ndarray
) -> Iterator[tuple[int, int, int]]:
    """(chunk, start, stop) for each chunk's part of a span, in parts of about `piece_frames`
    (memory: a piece of every reader and the queue's are held at once). A part never starts
    on a repeated index: within one get_batch a repeat is copied, at the start of the next
    it would be decoded again after a seek back."""
    a, b = span
    for c in range(a // chunk_frames, math.ceil(b / chunk_frames)):
        start, stop = max(a, c * chunk_frames), min(b, (c + 1) * chunk_frames)
        while start < stop:
            cut = min(stop, start + piece_frames)
            while cut < stop and indices[cut] == indices[cut - 1]:
                cut += 1
            yield c, start, cut
            start = cut


class Pieces:
    """Readers started on a film (decode_pieces): iterate for the Pieces as they finish; close
    (or leave the `with` block) to stop the readers, iterated or not."""

    def __init__(self, out: queue.Queue, stop: threading.Event, workers: list[threading.Thread]):
        self._out, self._stop, self._workers = out, stop, workers
        self._running = len(workers)

    def __iter__(self) -> Iterator[Piece]:
        return self

    def __next__(self) -> Piece:
        while self._running:
            item = self._out.get()
            if item is None:
                self._running -= 1
            elif isinstance(item, BaseException):
                self.close()
                raise item
            else:
                return item
        self.close()
        raise StopIteration

    def close(self) -> None:
        self._running = 0
        self._stop.set()
        for w in self._workers:
            w.join(timeout=10)

    def __enter__(self) -> Pieces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_pieces(
    plan: FramePlan,
    chunk_frames: int,
    skip: set[int] | None = None,
    readers: int | None = None,
    threads: int | None = None,
    piece_frames: int = PIECE_FRAMES,
) -> Pieces:
    """Start decoding every output frame of the chunks not in `skip`, with `readers` decord
    readers of `threads` decoder threads each (default_decoders), in background threads
    (decord releases the GIL): they run from now on, beside whatever the caller does (loading
    the model, encoding what came), and a bounded queue keeps a few pieces (of about
    `piece_frames` frames) in memory at most. The Pieces come in the order they finish; an
    error in a reader is raised there."""
    default_readers, default_threads = default_decoders()
    readers = max(1, readers or default_readers)
    threads = max(1, threads or default_threads)
    spans = plan_spans(plan, chunk_frames, skip or set(), readers)
    readers = min(readers, len(spans))
    work: queue.Queue = queue.Queue()
    for span in spans:
        work.put(span)
    out: queue.Queue = queue.Queue(maxsize=readers + 1)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(k: int) -> None:
        try:
            # The planning reader serves one single reader (it stands at frame 0, as a new one)
            reader = plan.reader if readers == 1 and plan.reader is not None else None
            reader = reader or _open_reader(plan.info.path, plan.width, plan.height, threads)
            while not stop.is_set():
                try:
                    span = work.get_nowait()
                except queue.Empty:
                    break
                for c, a, b in _pieces(span, chunk_frames, piece_frames, plan.indices):
                    frames = read_frames(reader, plan, plan.indices[a:b])
                    if not put(Piece(c, a - c * chunk_frames, frames)):
                        return
            put(None)
        except BaseException as e:  # handed to the consumer, which raises it
            put(e)

    workers = [
        threading.Thread(target=run, args=(k,), name=f"locomad-decode-{k}", daemon=True)
        for k in range(readers)
    ]
    for w in workers:
        w.start()
    return Pieces(out, stop, workers)
