"""Parallel decoding (locomad_cli/features/parallel.py): the sequential reader's frames."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from locomad_cli.card import tiny_card
from locomad_cli.features import parallel
from locomad_cli.features.extract import extract_features, load_features, partial_dir
from locomad_cli.features.parallel import decode_pieces, plan_spans, seek_points
from locomad_cli.features.video import film_keyframes, iter_chunks, plan_frames, probe
from locomad_cli.utils import LocomadError

VFR = "select='not(eq(mod(n\\,3)\\,2))*not(between(t\\,1.0\\,1.5))'"


def _film(path: Path, rate: str, seconds: float, codec: list[str], vf: str | None = None) -> Path:
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi"]
    cmd += ["-i", f"testsrc2=s=192x108:r={rate}:d={seconds}"]
    if vf:
        cmd += ["-vf", vf, "-fps_mode", "vfr"]
    subprocess.run([*cmd, *codec, "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    d = tmp_path_factory.mktemp("decode")
    # B-frames, keyframes at uneven places: GOPs of 3 to 40 frames, a last one cut short
    x264 = ["-c:v", "libx264", "-preset", "veryfast", "-x264-params"]
    uneven = [*x264, "keyint=40:min-keyint=3:scenecut=0", "-force_key_frames", "0.5,0.6,2.2,4.9"]
    # MPEG-4 part 2, B-frames, a keyframe every 11 frames. Closed GOPs: on open ones decord's
    # own seeks land frames off (docs/performance.md), so no two ways of reading them agree.
    mpeg4 = ["-c:v", "mpeg4", "-g", "11", "-bf", "2", "-flags", "+cgop", "-sc_threshold", "1e9"]
    return {
        "uneven": _film(d / "uneven.mp4", "25", 7.3, uneven),
        # 23.976 fps, another codec and container
        "ntsc": _film(d / "ntsc.mkv", "24000/1001", 5.1, mpeg4),
        # variable frame rate: frames dropped irregularly, real timestamps kept
        "vfr": _film(d / "vfr.mp4", "25", 4.0, [*x264, "keyint=12:min-keyint=2"], VFR),
    }


def _sequential(path: Path, fps: float, chunk: int, skip=None) -> dict[int, np.ndarray]:
    return dict(iter_chunks(plan_frames(probe(path), fps, 32), chunk, skip))


def _parallel(path: Path, fps: float, chunk: int, readers: int, skip=None, piece=64):
    plan = plan_frames(probe(path), fps, 32)
    got: dict[int, list] = {}
    for p in decode_pieces(plan, chunk, skip, readers=readers, threads=1, piece_frames=piece):
        got.setdefault(p.chunk, []).append(p)
    chunks = {}
    for c, pieces in got.items():
        pieces.sort(key=lambda p: p.offset)
        offsets = [p.offset for p in pieces]
        assert offsets == [0, *np.cumsum([len(p.frames) for p in pieces])[:-1]]
        chunks[c] = np.concatenate([p.frames for p in pieces])
    return plan, chunks


def test_seek_points_follow_decords_rule():
    idx = np.arange(0, 50, 5)
    # the reader stands at i-1's frame + 1; a seek when the wanted frame is under another key
    assert seek_points(idx, np.array([0, 12, 27, 40])).tolist() == [3, 6, 8]
    # keyframe 5 is where the reader stands after frame 4: it decodes on through it
    assert seek_points(np.array([0, 4, 9]), np.array([0, 5])).tolist() == []
    # every frame wanted (the next one each time), or repeats (fps above the film's rate)
    assert seek_points(np.arange(6), np.array([0, 2, 4])).tolist() == []
    assert seek_points(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 2])).tolist() == []
    assert seek_points(idx, np.array([], dtype=np.int64)).tolist() == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["uneven", "ntsc", "vfr"])
@pytest.mark.parametrize(("readers", "chunk", "piece"), [(2, 7, 64), (3, 5, 2), (4, 250, 4)])
def test_parallel_frames_are_the_sequential_frames(films, name, readers, chunk, piece):
    plan, chunks = _parallel(films[name], 5.0, chunk, readers, piece=piece)
    seq = _sequential(films[name], 5.0, chunk)
    assert sorted(chunks) == sorted(seq)
    for c in seq:
        np.testing.assert_array_equal(chunks[c], seq[c])
    spans = plan_spans(plan, chunk, set(), readers)
    assert len(spans) > 1  # really split between readers
    starts = set(seek_points(plan.indices, film_keyframes(plan)).tolist())
    assert spans[0][0] == 0 and all(a in starts for a, _ in spans[1:])
    assert [b for _, b in spans[:-1]] == [a for a, _ in spans[1:]]
    assert spans[-1][1] == plan.frames


def test_pieces_split_chunks_but_never_on_a_repeat():
    idx = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    # cuts at 3, 7 and 11 would each start on a repeat: moved on by one
    assert list(parallel._pieces((0, 12), 12, 3, idx)) == [(0, 0, 4), (0, 4, 8), (0, 8, 12)]
    parts = list(parallel._pieces((1, 12), 7, 3, idx))  # chunk boundaries always cut
    assert parts == [(0, 1, 4), (0, 4, 7), (1, 7, 10), (1, 10, 12)]
    assert list(parallel._pieces((0, 5), 250, 64, np.arange(5))) == [(0, 0, 5)]


@pytest.mark.slow
def test_uneven_segments(films):
    plan = plan_frames(probe(films["uneven"]), 5.0, 32)
    assert plan.frames == 36
    spans = plan_spans(plan, 250, set(), 2)
    lengths = [b - a for a, b in spans]
    assert sum(lengths) == 36 and len(set(lengths)) > 1


@pytest.mark.slow
def test_fps_above_the_films_rate(films):
    """30 FPS of a 23.976 film: frames repeat; each reader decodes what iter_chunks does."""
    _, chunks = _parallel(films["ntsc"], 30.0, 16, 3, piece=3)  # parts never start on a repeat
    seq = _sequential(films["ntsc"], 30.0, 16)
    assert sorted(chunks) == sorted(seq)
    for c in seq:
        np.testing.assert_array_equal(chunks[c], seq[c])


@pytest.mark.slow
def test_skipped_chunks_are_not_decoded(films):
    plan, chunks = _parallel(films["uneven"], 5.0, 6, 3, skip={1, 2, 5})
    seq = _sequential(films["uneven"], 5.0, 6, skip={1, 2, 5})
    assert sorted(chunks) == sorted(seq) == [0, 3, 4]
    for c in seq:
        np.testing.assert_array_equal(chunks[c], seq[c])
    assert plan_spans(plan, 6, set(range(6)), 3) == []


@pytest.mark.slow
def test_one_reader_or_no_keyframes_is_one_span(films):
    plan = plan_frames(probe(films["uneven"]), 5.0, 32)
    assert plan_spans(plan, 250, set(), 1) == [(0, 36)]
    plan.keyframes = np.zeros(0, dtype=np.int64)
    assert plan_spans(plan, 250, set(), 4) == [(0, 36)]


@pytest.mark.slow
def test_truncated_film_is_one_line(tmp_path):
    src = tmp_path / "fs.mp4"
    cmd = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=160x120:d=3"]
    cmd += ["-c:v", "libx264", "-x264-params", "keyint=10", "-movflags", "+faststart"]
    subprocess.run([*cmd, str(src)], check=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    with pytest.raises(LocomadError, match="truncated or corrupt") as e:
        plan = plan_frames(probe(cut), 5.0, 32)
        list(decode_pieces(plan, 4, readers=3, threads=1))
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_features_of_parallel_and_sequential_decoding(films, tmp_path, monkeypatch):
    card = tiny_card()
    feats = {}
    for readers in (1, 3):
        monkeypatch.setattr(parallel, "default_decoders", lambda readers=readers: (readers, 1))
        out = tmp_path / str(readers)
        extract_features([films["uneven"]], card, out_dir=out, device="cpu", chunk_frames=8)
        feats[readers] = load_features(out / "uneven.features.safetensors")[0]
    assert feats[1].shape == (36, 32)
    # the same pixels; only CPU batch splits differ (fp16 storage hides them but not always)
    torch.testing.assert_close(feats[3], feats[1], atol=1e-3, rtol=0)


class Crash(Exception):
    pass


@pytest.mark.slow
def test_resume_with_parallel_readers(films, tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "default_decoders", lambda: (3, 1))
    card, film = tiny_card(), films["uneven"]
    written = []

    def crash(path, chunk, n):
        written.append(chunk)
        if len(written) == 2:
            raise Crash  # killed right after the second chunk reached the disk

    with pytest.raises(Crash):
        extract_features([film], card, out_dir=tmp_path, chunk_frames=6, on_chunk=crash)
    part = partial_dir(tmp_path / "uneven.features.safetensors")
    on_disk = sorted(int(p.stem.split("-")[1]) for p in part.glob("chunk-*.safetensors"))
    assert on_disk == sorted(written)
    again = []
    res = extract_features(
        [film], card, out_dir=tmp_path, chunk_frames=6, on_chunk=lambda p, c, n: again.append(c)
    )
    assert res[0].status == "resumed" and sorted(again + written) == list(range(6))
    fresh = tmp_path / "fresh"
    extract_features([film], card, out_dir=fresh, chunk_frames=6)
    torch.testing.assert_close(
        load_features(tmp_path / "uneven.features.safetensors")[0],
        load_features(fresh / "uneven.features.safetensors")[0],
        atol=1e-3,
        rtol=0,
    )


@pytest.mark.slow
def test_a_resumed_run_decodes_only_the_missing_chunks(films, tmp_path, monkeypatch):
    from locomad_cli.features.clip import load_clip

    events = []
    real = parallel.decode_pieces

    def spy(plan, chunk_frames, skip=None, **kw):
        events.append(("decode", sorted(skip or ())))
        return real(plan, chunk_frames, skip, **kw)

    def load(card, device, dtype):
        events.append(("load", []))
        return load_clip(card, device, dtype)

    monkeypatch.setattr(parallel, "decode_pieces", spy)
    card, film = tiny_card(), films["uneven"]
    extract_features([film], card, out_dir=tmp_path, chunk_frames=8, load_encoder=load)
    # after the model: decoding beside its imports and build cost more than it saved on 2
    # cores (docs/performance.md)
    assert events == [("load", []), ("decode", [])]
    encoder = load_clip(card)
    plan = plan_frames(probe(film), 5.0, encoder.decode_short_side)
    frames = np.concatenate([f for _, f in iter_chunks(plan, 100)])
    ref = encoder.encode_images(torch.from_numpy(frames).permute(0, 3, 1, 2))
    got = load_features(tmp_path / "uneven.features.safetensors")[0]
    torch.testing.assert_close(got.float(), ref, atol=2e-3, rtol=2e-3)

    # a partial run to resume: only the missing chunks are decoded
    events.clear()

    def crash(path, chunk, n):
        raise Crash

    with pytest.raises(Crash):
        extract_features(
            [film], card, out_dir=tmp_path / "r", chunk_frames=8, on_chunk=crash, load_encoder=load
        )
    events.clear()
    extract_features([film], card, out_dir=tmp_path / "r", chunk_frames=8, load_encoder=load)
    assert events[0] == ("load", []) and events[1][0] == "decode" and len(events[1][1]) == 1
