"""Hardening, second round (issue 31): what a hostile but realistic user meets that
test_hostile.py and test_fuzz.py do not try. A disk that fills up under `voice` (the speech
cache) and under outputs written by ffmpeg, temporaries a killed run left, stdout closed or
full while describing, two runs on one film's outputs at once, a film with rotation metadata,
non-finite features and weights, card values that would eat the machine, and user paths the
OS refuses. Disk full is a real small tmpfs where this machine allows a mount (root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest
from helpers import adfilm
from helpers.cli import CLI, ROOT, fill, one_error, run_cli, small_disk
from helpers.datasets import saved_tiny_card
from helpers.media import make_video
from helpers.srt import srt_text

from locomad_cli.utils import TEMP_SUFFIX, atomic_open, atomic_path, final_name, sweep_temps


def dead_pid() -> int:
    """The id of a process that has ended (for temporaries 'left by a killed run')."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


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
    return adfilm.short_film(tmp_path_factory.mktemp("short"))


@pytest.mark.slow
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
            filler = fill(disk, pages)
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
def test_voice_killed_mid_run_then_rerun(short_film, tmp_path):
    """kill -9 while its temporaries exist (a work folder, a cue being written), then the same
    command: nothing of the killed run is left, and the outputs are an undisturbed run's."""
    import signal
    import time

    film, ad = short_film
    ref = tmp_path / "ref"
    assert run_cli(["voice", film, "--ad", ad, "-o", ref, "-q"]).returncode == 0
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [*CLI, "voice", str(film), "--ad", str(ad), "-o", str(out), "-q"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    seen = []  # the work folder: it lives from the first cue placed to the last output
    while proc.poll() is None and not seen:
        seen = list(out.glob(f".short.voice.*{TEMP_SUFFIX}")) if out.exists() else []
        time.sleep(0.005)
    if not seen:
        pytest.skip("the run ended before a temporary could be seen")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ours(out)  # the killed run left them
    res = run_cli(["voice", film, "--ad", ad, "-o", out, "-q"])
    assert res.returncode == 0, res.stderr
    assert ours(out) == [] and not (out / "short.locomad.lock").exists()
    for name in sorted(p.name for p in ref.iterdir() if p.is_file()):
        if not name.endswith(".mkv"):
            assert (out / name).read_bytes() == (ref / name).read_bytes(), name


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


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """film.mp4 (8 s), its features, a tiny card with saved weights, AD times: describe runs
    in a few seconds with --features, --shots off, --vad off."""
    from locomad_cli.features.extract import extract_features

    root = tmp_path_factory.mktemp("world")
    film = make_video(root / "film.mp4", duration=8.0, size="96x64")
    card, card_path, _ = saved_tiny_card(root)
    extract_features([film], card, out_dir=root / "feats", device="cpu")
    times = root / "film.ad-times.srt"
    times.write_text(srt_text([(0.5, 2.0, ""), (2.5, 4.5, ""), (5.0, 7.5, "")]))
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


@pytest.mark.slow
@pytest.mark.parametrize("into", ["closed pipe", "/dev/full"])
def test_tables_on_a_closed_or_full_stdout(tmp_path, into):
    """evaluate's and doctor's tables (rich, which ends the process with a silent exit 1 on a
    broken pipe): one warning naming what is kept, and the command's own exit code."""
    cues = [(1.0, 3.0, "A man walks into the kitchen."), (5.0, 7.0, "She opens the door.")]
    (tmp_path / "pred.srt").write_text(srt_text(cues), encoding="utf-8")
    (tmp_path / "ref.srt").write_text(srt_text(cues), encoding="utf-8")
    report = tmp_path / "report.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    evaluate = [*CLI, "evaluate", str(tmp_path / "pred.srt"), "-r", str(tmp_path / "ref.srt"),
                "--metrics", "cider,bleu", "-o", str(report)]  # fmt: skip
    for args, rc, kept in (
        (evaluate, 0, f"the report is written to {report}"),
        ([*CLI, "doctor", "--model", "demo"], None, "whether the card can describe here"),
        ([*CLI, "--version"], 0, "nothing else"),
    ):
        if into == "closed pipe":
            cmd = "set -o pipefail; " + " ".join(f"'{a}'" for a in args) + " | head -c0"
            res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env)
            why = "Broken pipe"
        else:
            with open("/dev/full", "w") as full:
                res = subprocess.run(args, stdout=full, stderr=subprocess.PIPE, text=True, env=env)
            why = "No space left on device"
        warning, *rest = res.stderr.strip().splitlines()
        assert f"stdout cannot be written ({why})" in warning and kept in warning, res.stderr
        assert "Traceback" not in res.stderr
        if rc is not None:
            assert res.returncode == rc and rest == [], res.stderr
        else:  # doctor: 1 with one error line when the card cannot describe here, else 0
            assert (res.returncode, len(rest)) in ((0, 0), (1, 1)), res.stderr
    assert json.loads(report.read_text())


# --- 3. one writer per film's outputs ----------------------------------------------------------


@pytest.mark.slow
def test_the_lock_names_its_holder_and_lets_a_waiter_in(tmp_path):
    from locomad_cli.lock import Busy, lock_path, output_lock

    path = lock_path(tmp_path, "film")
    assert path.name == "film.locomad.lock"
    code = (
        "import sys,time\nfrom locomad_cli.lock import output_lock\n"
        "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(2)\n"
        "    open(sys.argv[1] + '.done', 'w').close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                              text=True, env=env)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=f"being written by locomad process {holder.pid}"):
            with output_lock(path):
                pass
        with output_lock(path, wait=30):  # waits for the holder to finish its block
            assert Path(f"{path}.done").exists()
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


# --- 4. a phone's rotation metadata ------------------------------------------------------------


@pytest.mark.slow
def test_rotation_metadata_is_decoded_upright(tmp_path, card):
    """A landscape stream tagged rotate=90 (as phones write it) is a portrait film: its frames
    are those of a copy physically turned (ffmpeg's transpose, losslessly re-encoded), at the
    upright size; its features equal that copy's."""
    import torch

    from locomad_cli.features.extract import extract_features, load_features
    from locomad_cli.features.video import probe

    land = make_video(tmp_path / "land.mp4", duration=3.0, size="128x72")
    ff = ["ffmpeg", "-v", "error", "-y", "-i", str(land)]
    tagged = tmp_path / "tagged.mp4"
    subprocess.run([*ff, "-c", "copy", "-metadata:s:v:0", "rotate=90", tagged], check=True)
    turned = tmp_path / "turned.mp4"
    subprocess.run([*ff, "-vf", "transpose=2", "-c:v", "libx264", "-qp", "0", "-preset",
                    "ultrafast", "-pix_fmt", "yuv420p", turned], check=True)  # fmt: skip
    info = probe(tagged)
    assert (info.width, info.height, info.rotation) == (128, 72, 90)
    assert (
        (info.display_width, info.display_height)
        == (72, 128)
        == (
            probe(turned).display_width,
            probe(turned).display_height,
        )
    )
    extract_features([tagged, turned], card, out_dir=tmp_path / "f", device="cpu")
    a, meta = load_features(tmp_path / "f" / "tagged.features.safetensors")
    b, _ = load_features(tmp_path / "f" / "turned.features.safetensors")
    assert meta["decode_size"].split("x")[0] < meta["decode_size"].split("x")[1]  # portrait
    cos = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
    assert a.shape == b.shape and float(cos.min()) > 0.999, cos


# --- 5. input checks at the door ---------------------------------------------------------------


def test_non_finite_features_are_refused_with_the_count(tmp_path):
    import torch
    from safetensors.torch import save_file

    from locomad_cli.features.extract import load_features
    from locomad_cli.utils import LocomadError

    x = torch.zeros(40, 32)
    x[3, :5] = float("nan")
    x[7, 0] = float("inf")
    path = tmp_path / "f.features.safetensors"
    save_file({"features": x.half()}, str(path), metadata={"fps": "5", "duration": "8"})
    with pytest.raises(LocomadError, match=r"f.features.safetensors: 6 non-finite value\(s\) "
                       r"\(NaN or infinity\) in 2 of 40 frame"):  # fmt: skip
        load_features(path)


def test_non_finite_weights_are_refused_with_the_count(tmp_path, card):
    import torch
    from safetensors.torch import load_file, save_file

    from locomad_cli.model.checkpoint import load_model, save_model
    from locomad_cli.model.locomad import LoCoMAD
    from locomad_cli.utils import LocomadError

    folder = save_model(LoCoMAD.from_card(card, pretrained=False), tmp_path / "w")
    state = load_file(folder / "model.safetensors")
    name = sorted(k for k, v in state.items() if v.is_floating_point() and v.numel() > 4)[0]
    state[name].view(-1)[:4] = torch.tensor([float("nan"), float("inf"), 1.0, float("nan")])
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "locomad-weights-1"})
    with pytest.raises(LocomadError, match=rf"3 non-finite value\(s\).*1 tensor\(s\), e.g. {name}"):
        load_model(folder)


@pytest.mark.parametrize(
    "override, bound",
    [
        ("llm.num_beams=100000", "llm.num_beams must be at most 64, got 100000"),
        ("llm.max_new_tokens=1000000", "llm.max_new_tokens must be at most 1024"),
        ("pme.max_frames=99999999", "pme.max_frames must be at most 10000"),
        ("fps=1000", "fps must be at most 60, got 1000.0"),
    ],
)
def test_card_values_that_drive_memory_or_time_are_bounded(override, bound):
    from locomad_cli.card import load_card
    from locomad_cli.utils import LocomadError

    with pytest.raises(LocomadError, match=bound.replace(".", r"\.")):
        load_card("demo", [override])


def test_convert_weights_flattens_a_nested_state_dict(tmp_path):
    import torch
    from safetensors.torch import load_file

    from locomad_cli.model.checkpoint import convert_weights
    from locomad_cli.utils import LocomadError

    nested = {
        "epoch": 3,
        "encoder": {"proj.weight": torch.ones(2, 2), "blocks": [{"w": torch.zeros(3)}]},
        "head.bias": torch.full((2,), 5.0),
    }
    torch.save(nested, tmp_path / "n.pth")
    out = convert_weights(tmp_path / "n.pth", tmp_path / "n.safetensors")
    got = load_file(out)
    assert sorted(got) == ["encoder.blocks.0.w", "encoder.proj.weight", "head.bias"]
    assert torch.equal(got["head.bias"], torch.full((2,), 5.0))
    clash = {"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}}
    torch.save(clash, tmp_path / "c.pth")
    with pytest.raises(LocomadError, match="would both be named a.b"):
        convert_weights(tmp_path / "c.pth", tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists()


# --- 6. the user's paths, text files, hints ----------------------------------------------------


@pytest.mark.slow
def test_user_paths_the_os_refuses_are_one_line(world, tmp_path):
    import shutil

    long_film = tmp_path / ("a" * 240 + ".mp4")
    shutil.copy(world["film"], long_film)
    feats = tmp_path / "long.features.safetensors"  # same film: the features fit it
    shutil.copy(world["features"], feats)
    args = describe_args(world, tmp_path / "out")
    args[1], args[5] = long_film, feats
    one_error(run_cli(args), "name is too long")
    taken = tmp_path / "taken"
    (taken / "film.ad.srt").mkdir(parents=True)  # a folder where a track goes
    line = one_error(run_cli(describe_args(world, taken)), "film.ad.srt", "folder")
    assert "3 of 3 descriptions are kept" in line and "with --resume" in line
    assert ours(taken) == [] and not (taken / "film.ad.json").exists()
    (taken / "film.ad.srt").rmdir()
    res = run_cli(describe_args(world, taken, "--resume"))  # as the line says
    assert res.returncode == 0 and (taken / "film.ad.srt").is_file(), res.stderr


def test_card_encodings(tmp_path):
    from locomad_cli.card import load_card
    from locomad_cli.utils import LocomadError

    text = (ROOT / "models" / "demo.yaml").read_text(encoding="utf-8")
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes(text.encode("utf-16"))  # with its BOM, as Windows editors save it
    assert load_card(utf16).name == "demo"
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(text.replace("demo world", "démo world").encode("latin-1"))
    with pytest.raises(LocomadError, match=r"latin.yaml: not a UTF-8 text file .*save the"):
        load_card(latin)


@pytest.mark.parametrize("item", ["=1", ".num_beams=1", "llm.=1", " =x"])
def test_set_with_an_empty_key_names_the_problem(item):
    from locomad_cli.card import load_card
    from locomad_cli.utils import LocomadError

    with pytest.raises(LocomadError, match="has an empty key name"):
        load_card("demo", [item])


def test_a_copied_card_with_absolute_paths_is_the_same_architecture(tmp_path):
    import yaml

    from locomad_cli.card import card_from_dict
    from locomad_cli.model.checkpoint import architecture

    data = yaml.safe_load((ROOT / "models" / "demo.yaml").read_text())
    shipped = card_from_dict(data)
    data["pme"]["tokenizer"] = str(ROOT / data["pme"]["tokenizer"])
    data["llm"]["tokenizer"] = str(ROOT / data["llm"]["tokenizer"])
    data["clip"]["pretrained"] = str(ROOT / data["clip"]["pretrained"])
    data["llm"]["name"] = "my-copy-of-demo-opt"  # a label only: the config makes it
    assert architecture(card_from_dict(data)) == architecture(shipped)
    data["pme"]["num_layers"] = 3
    assert architecture(card_from_dict(data)) != architecture(shipped)


def test_hints_name_real_options_and_safe_commands(tmp_path):
    from locomad_cli.tracks.readers import read_cues
    from locomad_cli.utils import LocomadError

    ass = "[Script Info]\nScriptType: v4.00+\n\n[Events]\nDialogue: 0,0:00:01.00,0:00:02.00,,Hi\n"
    disguised = tmp_path / "dialogue.srt"
    disguised.write_text(ass)
    with pytest.raises(LocomadError) as e:
        read_cues(disguised)
    assert "ffmpeg -n -i dialogue.srt dialogue.converted.srt" in str(e.value)


@pytest.mark.slow
def test_stale_features_hint_is_a_real_command(world, tmp_path):
    """describe has no --overwrite: the hint is the extract-features command that has one,
    and running it as written makes describe go on."""
    import shlex
    import shutil

    film = make_video(tmp_path / "film.mp4", duration=8.0, size="64x48")  # a new cut
    shutil.copy(world["features"], tmp_path / "film.features.safetensors")  # the old one's
    args = ["describe", film, "-m", world["card"], "--ad-times", world["times"],
            "--device", "cpu", "--shots", "off", "--vad", "off", "-q"]  # fmt: skip
    line = one_error(run_cli(args), "made from another file", "--overwrite")
    command = line.split("replace it with: ")[1].split(" (or delete it)")[0]
    argv = shlex.split(command)
    assert argv[:2] == ["locomad", "extract-features"]
    res = run_cli([*argv[1:], "--device", "cpu", "-q"])
    assert res.returncode == 0, res.stderr
    assert run_cli(args).returncode == 0


@pytest.mark.slow
def test_a_film_named_like_an_option(world, tmp_path):
    import shutil

    shutil.copy(world["film"], tmp_path / "-dash.mp4")
    base = ["-m", world["card"], "--ad-times", world["times"], "--features", world["features"],
            "--device", "cpu", "--shots", "off", "--vad", "off", "-q", "-o", "out"]  # fmt: skip
    one_error(run_cli(["describe", "-dash.mp4", *base], cwd=tmp_path), "./-dash.mp4", "--")
    res = run_cli(["describe", *base, "--", "-dash.mp4"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "-dash.ad.srt").is_file()


def test_a_refused_train_leaves_no_run_folder(tmp_path):
    from locomad_cli.card import tiny_card
    from locomad_cli.train.loop import TrainConfig, train
    from locomad_cli.utils import LocomadError

    empty = tmp_path / "films"
    empty.mkdir()
    card = tmp_path / "tiny.yaml"
    card.write_text(tiny_card().to_yaml())
    run = tmp_path / "run"
    cfg = TrainConfig(stage=1, data=f"folder:{empty}", out=str(run), model=str(card),
                      val_data="none", num_workers=0, progress=False)  # fmt: skip
    with pytest.raises(LocomadError):
        train(cfg)
    assert not run.exists()
    run.mkdir()  # a folder the user made is theirs: kept
    with pytest.raises(LocomadError):
        train(cfg)
    assert run.is_dir()


@pytest.mark.slow
def test_an_excerpt_of_the_demo_film_is_familiar(tmp_path):
    from locomad_cli.features import familiar

    stats = familiar.load(ROOT / "weights" / "demo")
    for start in (0, 45, 90):
        clip = tmp_path / f"clip{start}.mp4"
        cmd = ["ffmpeg", "-v", "error", "-y", "-ss", str(start), "-t", "20"]
        subprocess.run([*cmd, "-i", ROOT / "demo" / "demo.mp4", "-c", "copy", clip], check=True)
        assert familiar.unfamiliar(clip, 20.0, stats, "demo") is None, start
    other = make_video(tmp_path / "pattern.mp4", duration=20.0, size="160x120")
    assert familiar.unfamiliar(other, 20.0, stats, "demo") is not None


@pytest.mark.slow
def test_features_being_written_by_another_run_are_left_to_it(tmp_path, card):
    """extract-features (or describe extracting) on a film whose features another process is
    writing: one line naming it, nothing of the other's touched."""
    from locomad_cli.features.extract import extract_features
    from locomad_cli.lock import Busy, lock_path, output_lock

    film = make_video(tmp_path / "clip.mp4", duration=2.0, size="64x48")
    (tmp_path / "clip.features.partial").mkdir()
    (tmp_path / "clip.features.partial" / "state.json").write_text("{}")  # the other's
    with output_lock(lock_path(tmp_path, "clip.features")):
        with pytest.raises(Busy, match=rf"the features {tmp_path}/clip.features.safetensors are "
                           r"being written by locomad process \d+"):  # fmt: skip
            extract_features([film], card, device="cpu")
    assert (tmp_path / "clip.features.partial" / "state.json").read_text() == "{}"
    extract_features([film], card, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.features.safetensors", "clip.mp4"]


@pytest.mark.slow
def test_a_full_disk_is_named_under_describe_and_extract_features(world, reference, tmp_path):
    """The one line names the disk and what it has left; a rerun with space again writes what
    an undisturbed run writes (describe: the same tracks; its progress was kept)."""
    with small_disk(tmp_path / "disk", "400k") as disk:
        filler = fill(disk, 0)
        args = ["extract-features", world["film"], "-m", world["card"], "--device", "cpu", "-q"]
        one_error(run_cli([*args, "-o", disk / "feats"]), "the disk is full", f"{disk} has")
        assert ours(disk) == [] and not list((disk / "feats").glob("*.lock"))
        out = disk / "out"
        one_error(run_cli(describe_args(world, out)), "the disk is full", f"{disk} has")
        assert not out.exists()  # the folder it made, empty: removed
        filler = fill(disk, 1)  # the progress fits, the tracks not
        line = one_error(run_cli(describe_args(world, out)), f"{disk} has", "--resume")
        assert "3 of 3 descriptions are kept" in line and ours(disk) == []
        filler.unlink()
        res = run_cli(describe_args(world, out, "--resume"))
        assert res.returncode == 0, res.stderr
        same_tracks(out, reference[0])
