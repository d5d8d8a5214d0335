"""Hardening, second round (issue 31): what a hostile but realistic user meets that
test_hostile.py and test_fuzz.py do not try. A disk that fills up under `voice` (the speech
cache) and under outputs written by ffmpeg, temporaries a killed run left, stdout closed or
full while describing, two runs on one film's outputs at once, a film with rotation metadata,
non-finite features and weights, card values that would eat the machine, and user paths the
OS refuses. Disk full is a real small tmpfs where this machine allows a mount (root).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest
from adfilm import make_track, write_track
from media import make_video

from locomad_cli.utils import TEMP_SUFFIX, atomic_open, atomic_path, final_name, sweep_temps

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from locomad_cli.cli import main; main()"]


def run_cli(args, cwd=None, timeout=600, **kw):
    """`locomad ARGS` as a user runs it: offline, one torch thread, no debug."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("LOCOMAD_DEBUG", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


def one_error(res, *words: str) -> str:
    """Exit 2, exactly one stderr line starting `locomad: error:`, holding every word."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("locomad: error: "), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def dead_pid() -> int:
    """The id of a process that has ended (for temporaries 'left by a killed run')."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A real file system of `size` (tmpfs) at `path`; skipped where mounting is not allowed."""
    path.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_to(disk: Path, free_pages: int) -> Path:
    """Fill `disk` until `free_pages` pages of 4 KiB are left."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(disk)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - free_pages * 4096))
    return filler


def ours(folder: Path) -> list[str]:
    """Temporaries of ours anywhere under `folder`."""
    return [str(p) for p in folder.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


# --- 1. temporaries: recognisable, swept, named after their output ------------------------------


def test_temporaries_name_their_output_and_a_rerun_sweeps_only_dead_ones(tmp_path):
    target = tmp_path / "film.ad.srt"
    dead, alive = dead_pid(), os.getppid()
    left = tmp_path / f".film.ad.srt.{dead}-abc123{TEMP_SUFFIX}"
    left.write_text("half")
    running = tmp_path / f".film.ad.srt.{alive}-xyz{TEMP_SUFFIX}"
    running.write_text("being written")
    other = tmp_path / f".film.ad.vtt.{dead}-q{TEMP_SUFFIX}"
    other.write_text("another output's")
    foreign = tmp_path / ".film.ad.srt.12345.tmp"  # not our pattern: never touched
    foreign.write_text("someone else's")
    assert final_name(left) == target and final_name(target) == target
    with atomic_path(target) as tmp:
        assert tmp.name.startswith(f".film.ad.srt.{os.getpid()}-") and tmp.name.endswith(
            TEMP_SUFFIX
        )
        assert not left.exists()  # swept: its process is gone
        tmp.write_text("whole")
    assert target.read_text() == "whole"
    assert running.exists() and other.exists() and foreign.exists()
    assert sweep_temps(tmp_path) == 1 and not other.exists() and running.exists()


def test_a_failed_write_names_the_output_not_the_temporary(tmp_path):
    """A write to an open file names no file (json.dump, wave): atomic_path names the output
    it stands for, so the one line the user sees is about their file."""
    target = tmp_path / "report.json"

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, _):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as e, atomic_open(target) as f:
        Full(f).write("x")
    assert e.value.errno == 28 and e.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


# --- 1. the speech cache and voice on a disk that fills up ------------------------------------


@pytest.fixture(scope="module")
def short_film(tmp_path_factory):
    """A 5 s film with a tone, and a two-slot AD track for it."""
    folder = tmp_path_factory.mktemp("short")
    film = make_video(folder / "short.mp4", duration=5.0, size="160x120", audio=True)
    slots = [(0.5, 2.5, ["A door opens."]), (3.0, 4.9, ["Rain falls."])]
    return film, write_track(make_track(film, None, slots), folder / "short.ad.json")


def test_a_cache_entry_without_audio_is_made_again(tmp_path):
    """An entry under its final name that is not a whole WAV (an older locomad on a full disk,
    a power cut) is synthesized again instead of failing every later run."""
    from locomad_cli.voice.tts import SpeechCache, make_engine

    cache = SpeechCache(tmp_path / "c", make_engine())
    good = cache.synth("A cat sleeps.", 140)
    whole = good.path.read_bytes()
    for poison in (b"", whole[:100], whole[: len(whole) // 2]):
        good.path.write_bytes(poison)
        again = SpeechCache(tmp_path / "c", make_engine())
        s = again.synth("A cat sleeps.", 140)
        assert again.synthesized == 1 and s.duration == pytest.approx(good.duration)
        assert good.path.read_bytes() == whole
    dead = dead_pid()
    (tmp_path / "c" / f".x.wav.{dead}-k{TEMP_SUFFIX}").write_bytes(b"RIFF")
    again = SpeechCache(tmp_path / "c", make_engine())
    again.synth("Another text.", 140)
    assert ours(tmp_path) == []


@pytest.mark.slow
def test_voice_on_a_disk_that_fills_up(short_film, tmp_path):
    """At every level of free space `voice` ends in one line naming the file and the disk,
    exit 2; what is left is whole (cached cues that read, no temporaries, no output but
    complete ones); with space again the same command writes what an undisturbed run writes."""
    film, ad = short_film
    ref = tmp_path / "ref"
    res = run_cli(["voice", film, "--ad", ad, "-o", ref, "-q"])
    assert res.returncode == 0, res.stderr
    outputs = sorted(p.name for p in ref.iterdir() if p.is_file())
    need = sum(p.stat().st_size for p in ref.rglob("*") if p.is_file()) // 4096
    with small_disk(tmp_path / "disk", "6m") as disk:
        out = disk / "out"
        for pages in (0, 12, need // 3, need * 2 // 3, need * 9 // 10):
            filler = fill_to(disk, pages)
            res = run_cli(["voice", film, "--ad", ad, "-o", out, "-q"])
            line = one_error(res, "the disk is full", f"{disk} has", "free", "kept")
            assert "cannot write " in line
            assert ours(disk) == [] and not (out / "short.locomad.lock").exists()
            for cue in (out / "short.voice-cache").glob("*"):
                with wave.open(str(cue)) as w:  # every kept cue is a whole WAV
                    assert len(w.readframes(w.getnframes())) == 2 * w.getnframes() > 0
            for name in outputs:  # an output is absent or whole, never cut
                if (out / name).exists() and name.endswith(".wav"):
                    assert (out / name).read_bytes() == (ref / name).read_bytes()
            filler.unlink()
        res = run_cli(["voice", film, "--ad", ad, "-o", out, "-q"])
        assert res.returncode == 0, res.stderr
        assert sorted(p.name for p in out.iterdir() if p.is_file()) == outputs
        for name in outputs:
            if not name.endswith(".mkv"):  # the MKV holds a random segment id
                assert (out / name).read_bytes() == (ref / name).read_bytes(), name
        probe = ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0"]
        streams = subprocess.run([*probe, out / "short.described.mkv"], capture_output=True)
        assert streams.stdout.split() == [b"video", b"audio", b"audio", b"subtitle"]


@pytest.mark.slow
def test_voice_rerun_sweeps_what_a_killed_run_left(short_film, tmp_path):
    film, ad = short_film
    out = tmp_path / "out"
    dead = dead_pid()
    (out / "short.voice-cache").mkdir(parents=True)
    work = out / f".short.voice.{dead}-w{TEMP_SUFFIX}"
    work.mkdir()
    (work / "stem-raw.wav").write_bytes(b"RIFF....")
    (out / f".short.ad.wav.{dead}-a{TEMP_SUFFIX}").write_bytes(b"RIFF")
    (out / "short.voice-cache" / f".0123.wav.{dead}-c{TEMP_SUFFIX}").write_bytes(b"")
    (out / "notes.tmp").write_text("the user's own")
    res = run_cli(["voice", film, "--ad", ad, "-o", out, "-q"])
    assert res.returncode == 0, res.stderr
    assert ours(out) == [] and (out / "notes.tmp").exists()


# --- a world for describe: a tiny card with weights, a film and its features ------------------


def _srt(cues) -> str:
    def stamp(t: float) -> str:
        ms = round(t * 1000)
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    return "".join(
        f"{i}\n{stamp(a)} --> {stamp(b)}\n{t}\n\n" for i, (a, b, t) in enumerate(cues, 1)
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """film.mp4 (8 s), its features, a tiny card with saved weights, AD times: describe runs
    in a few seconds with --features, --shots off, --vad off."""
    import torch

    from locomad_cli.card import tiny_card
    from locomad_cli.features.extract import extract_features
    from locomad_cli.model.checkpoint import save_model
    from locomad_cli.model.locomad import LoCoMAD

    root = tmp_path_factory.mktemp("world")
    film = make_video(root / "film.mp4", duration=8.0, size="96x64")
    card = tiny_card()
    card.llm.max_new_tokens = 3
    card.dsm.proposal_len = 3
    card.dsm.top_k = 2
    torch.manual_seed(0)
    card.weights = str(save_model(LoCoMAD.from_card(card, pretrained=False), root / "weights"))
    card_path = root / "tiny.yaml"
    card_path.write_text(card.to_yaml())
    extract_features([film], card, out_dir=root / "feats", device="cpu")
    times = root / "film.ad-times.srt"
    times.write_text(_srt([(0.5, 2.0, ""), (2.5, 4.5, ""), (5.0, 7.5, "")]))
    return {
        "root": root,
        "film": film,
        "card": card_path,
        "features": root / "feats" / "film.features.safetensors",
        "times": times,
    }


def describe_args(w, out, *extra):
    return [
        "describe", w["film"], "-m", w["card"], "--features", w["features"],
        "--ad-times", w["times"], "-o", out, "--device", "cpu", "--shots", "off",
        "--vad", "off", "-q", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """The tracks of one undisturbed describe run."""
    out = tmp_path_factory.mktemp("reference")
    res = run_cli(describe_args(world, out))
    assert res.returncode == 0, res.stderr
    return out, res.stdout


def same_tracks(out: Path, ref: Path) -> None:
    names = sorted(p.name for p in ref.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        if name.endswith(".json"):
            a, b = json.loads((out / name).read_text()), json.loads((ref / name).read_text())
            assert [s["text"] for s in a["slots"]] == [s["text"] for s in b["slots"]]
            assert [(s["start"], s["end"]) for s in a["slots"]] == [
                (s["start"], s["end"]) for s in b["slots"]
            ]
        else:
            assert (out / name).read_bytes() == (ref / name).read_bytes(), name


# --- 2. stdout closed or full never decides whether tracks are written -------------------------


@pytest.mark.slow
def test_describe_into_a_pipe_closed_early(world, reference, tmp_path):
    """`locomad describe ... | head -1`, for real through the shell: the tracks are written
    all the same, and one warning says the results stopped being printed."""
    out = tmp_path / "out"
    cmd = " ".join(f"'{a}'" for a in [*CLI, *map(str, describe_args(world, out))])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # `head -c0` closes the pipe at once, so the very first result meets a closed stdout
    res = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} | head -c0"],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    warnings = res.stderr.strip().splitlines()
    assert len(warnings) == 1 and "stdout cannot be written (Broken pipe)" in warnings[0]
    assert "files are still written" in warnings[0]
    same_tracks(out, reference[0])
    res = subprocess.run(["bash", "-c", f"{cmd} | head -1"], capture_output=True, text=True,
                         env=env)  # fmt: skip
    assert res.stdout == reference[1].splitlines(keepends=True)[0]
    same_tracks(out, reference[0])


@pytest.mark.slow
def test_describe_with_stdout_on_a_full_device(world, reference, tmp_path):
    out = tmp_path / "out"
    with open("/dev/full", "w") as full:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        res = subprocess.run([*CLI, *map(str, describe_args(world, out))], stdout=full,
                             stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert "stdout cannot be written (No space left on device)" in line
    assert "progress" not in line  # the progress file and its disk are not blamed
    same_tracks(out, reference[0])


# --- 3. one writer per film's outputs ----------------------------------------------------------


def test_the_lock_names_its_holder_and_lets_a_waiter_in(tmp_path):
    from locomad_cli.lock import Busy, lock_path, output_lock

    path = lock_path(tmp_path, "film")
    assert path.name == "film.locomad.lock"
    code = (
        "import sys,time\nfrom locomad_cli.lock import output_lock\n"
        "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(2)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                              text=True, env=env)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=f"being written by locomad process {holder.pid}"):
            with output_lock(path):
                pass
        with output_lock(path, wait=30):  # waits for the holder to finish
            assert holder.poll() is not None
    finally:
        holder.wait()
    assert not path.exists()  # the holder removes its lock file


@pytest.mark.slow
def test_two_describes_on_one_film_at_once(world, reference, tmp_path):
    """Started together on the same outputs: each one ends with the tracks written or in one
    line naming the other process; the tracks are a single run's, whole."""
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("LOCOMAD_DEBUG", None)
    args = [*CLI, *map(str, describe_args(world, out))]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate() for p in procs]
    results = [(p.pid, p.returncode, o, e) for p, (o, e) in zip(procs, outputs, strict=True)]
    ok = [r for r in results if r[1] == 0]
    assert ok, results
    for pid, code, _, err in results:
        if code != 0:
            other = next(r[0] for r in results if r[0] != pid)
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1, err
            assert f"being written by locomad process {other}" in lines[0]
    same_tracks(out, reference[0])
