"""The `locomad` command line: --help, --version, doctor, extract-features and its errors."""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.media import make_audio_only, make_video
from typer.testing import CliRunner

from locomad_cli import __version__
from locomad_cli.cli import app
from locomad_cli.features.extract import load_features

runner = CliRunner()


@pytest.fixture
def tiny_yaml(tmp_path, card):
    path = tmp_path / "tiny.yaml"
    path.write_text(card.to_yaml())
    return path


def test_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for command in ("doctor", "extract-features"):
        assert command in res.stdout


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.stdout.strip() == f"locomad {__version__}"


@pytest.mark.slow
def test_doctor_reports_each_check(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # do not wait on the network
    monkeypatch.setenv("COLUMNS", "200")
    res = runner.invoke(app, ["doctor"])
    # no trained OPT weights exist here: the card cannot describe, and doctor says so
    assert res.exit_code == 1, res.output
    for row in ("ffmpeg", "ffprobe", "decord", "torch device", "java", "model hub", "CoreNLP"):
        assert row in res.stdout
    assert "LoCo-MAD weights (opt-2.7b)" in res.stdout
    assert res.stderr.strip().splitlines() == [
        "locomad: error: model card 'opt-2.7b' cannot describe a film on this machine: "
        "missing CLIP weights (ViT-L-14), LoCo-MAD weights (opt-2.7b), "
        "language model (facebook/opt-2.7b)"
    ]
    demo = runner.invoke(app, ["doctor", "--model", "demo"])  # shipped weights: it can run
    assert demo.exit_code == 0, demo.output
    assert "LoCo-MAD weights (demo)" in demo.stdout and demo.stderr == ""


def test_doctor_bad_card_is_exit_2():
    res = runner.invoke(app, ["doctor", "--model", "no-such-card"])
    assert res.exit_code == 2
    assert res.stderr.strip().startswith("locomad: error: model card 'no-such-card' not found")


@pytest.mark.slow
def test_extract_features_cli(tmp_path, tiny_yaml):
    video = make_video(tmp_path / "film.mp4", duration=2.0, size="160x90")
    out = tmp_path / "feats"
    args = ["extract-features", str(video), "-o", str(out), "--model", str(tiny_yaml)]
    res = runner.invoke(app, [*args, "--fps", "2", "--batch-size", "3", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    feats, meta = load_features(out / "film.features.safetensors")
    assert feats.shape == (4, 32) and meta["fps"] == 2.0 and meta["card"] == "tiny"
    assert "extracted 1 film(s), 4 frames" in res.stderr
    res = runner.invoke(app, [*args, "--fps", "2"])
    assert res.exit_code == 0 and "skipped 1 already done" in res.stderr
    res = runner.invoke(app, [*args, "--set", "fps=1", "--overwrite", "--dtype", "fp32"])
    assert res.exit_code == 0, res.output
    assert load_features(out / "film.features.safetensors")[0].shape == (2, 32)


def _make_bad(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "missing.mp4"
    if kind == "not-a-video":
        p = tmp_path / "notes.mp4"
        p.write_text("just text\n" * 20)
        return p
    if kind == "audio-only":
        return make_audio_only(tmp_path / "sound.m4a")
    if kind == "zero-length":
        p = tmp_path / "zero.mp4"
        p.write_bytes(b"")
        return p
    if kind == "truncated":
        src = make_video(tmp_path / "src.mp4", duration=2.0, size="96x64")
        p = tmp_path / "cut.mp4"
        p.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        src.unlink()
        return p
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["missing", "not-a-video", "audio-only", "zero-length", "truncated"]
)
@pytest.mark.slow
def test_bad_input_is_one_line_exit_2_no_output(tmp_path, tiny_yaml, kind):
    bad = _make_bad(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    res = runner.invoke(app, ["extract-features", str(bad), "-o", str(out), "-m", str(tiny_yaml)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"locomad: error: {bad}: ")
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow
def test_unwritable_output_dir(tmp_path, tiny_yaml):
    video = make_video(tmp_path / "film.mp4", duration=1.0, size="96x64")
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    out = blocker / "sub"
    res = runner.invoke(app, ["extract-features", str(video), "-o", str(out), "-m", str(tiny_yaml)])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        f"locomad: error: output folder {out} is not writable: Not a directory"
    ]


@pytest.mark.slow
def test_bad_options_are_exit_2(tmp_path, tiny_yaml):
    video = make_video(tmp_path / "film.mp4", duration=1.0, size="96x64")
    base = ["extract-features", str(video), "-m", str(tiny_yaml), "-o", str(tmp_path / "o")]
    for extra, words in (
        (["--fps", "0"], "--fps must be positive"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["--set", "clip.nonsense=1"], "unknown key(s) nonsense"),
    ):
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2, extra
        assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_console_script_exit_code(tmp_path):
    """The installed entry point, as a user runs it: no traceback, exit 2."""
    code = "from locomad_cli.cli import main; main()"
    res = subprocess.run(
        [sys.executable, "-c", code, "extract-features", str(tmp_path / "none.mp4")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr.strip() == f"locomad: error: {tmp_path / 'none.mp4'}: no such file"


def test_a_result_line_is_one_write(monkeypatch):
    """Under a launcher several processes share stdout. print() writes a line's text and its
    newline separately, and unbuffered (PYTHONUNBUFFERED, as in CI) each is a write of its
    own, so another process's line can land between them (CI lost a description that way).
    A description line goes out in one write, newline included."""
    import io

    from locomad_cli import cli

    class Writes(io.StringIO):
        def __init__(self):
            super().__init__()
            self.calls = []

        def write(self, s):
            self.calls.append(s)
            return super().write(s)

    out = Writes()
    monkeypatch.setattr(sys, "stdout", out)
    cli._print_description({"start": 1.0, "end": 2.5, "text": "Tom\nsits."}, "a.mp4")
    cli.result_line("voiced 3 descriptions")
    assert out.calls == [
        "a.mp4  00:00:01.000 --> 00:00:02.500  Tom sits.\n",
        "voiced 3 descriptions\n",
    ]


def _captured(monkeypatch, module: str, name: str, args: list[str], result=None) -> list:
    """Run `locomad ARGS` with module.name replaced by a recorder of its arguments."""
    import importlib

    seen = []

    def record(*a, **k):
        seen.append((a, k))
        return result

    monkeypatch.setattr(importlib.import_module(module), name, record)
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return seen


def test_every_describe_flag_lands_in_its_option(monkeypatch, tmp_path):
    """The options dataclass is filled from the command's parameters by name: each flag,
    set to a value other than its default, arrives in its own field."""
    from locomad_cli.describe.film import DescribeOptions

    args = ["describe", "f.mp4", "--subs", "s.srt", "--subs-encoding", "cp1250",
            "--ad-times", "t.srt", "-m", "demo", "--set", "a=1", "--set", "b=2",
            "--weights", "w", "--setting", "oracle", "--reference", "r.srt", "-o", "out",
            "-f", "srt", "--features", "x.safetensors", "--device", "cpu", "--threads", "3",
            "--cast", "c.txt", "--batch-size", "4", "--resume", "--min-gap", "1.5",
            "--margin", "0.2", "--max-len", "6", "--vad", "off", "--shots", "off",
            "--cut-margin", "0.25", "-q"]  # fmt: skip
    ((a, _),) = _captured(monkeypatch, "locomad_cli.describe.many", "describe_films", args, [])
    assert a[0] == ["f.mp4"]
    assert a[1] == DescribeOptions(
        subs="s.srt", subs_encoding="cp1250", ad_times="t.srt", model="demo",
        overrides=["a=1", "b=2"], weights="w", setting="oracle", reference="r.srt",
        output_dir="out", formats="srt", features="x.safetensors", device="cpu", batch_size=4,
        resume=True, min_gap=1.5, margin=0.2, max_len=6.0, vad="off", shots="off",
        cut_margin=0.25, progress=False, threads=3, cast="c.txt",
    )  # fmt: skip
    assert a[4] is None  # no --voice


def test_every_voice_flag_lands_in_its_option(monkeypatch):
    from locomad_cli.voice.fit import VoiceOptions
    from locomad_cli.voice.mix import MixOptions

    args = ["voice", "d/f.mp4", "--tts", "piper", "--voice", "v.onnx", "--rate", "150",
            "--max-rate", "210", "--overflow", "keep", "--extended", "--subs", "s.srt",
            "-o", "out", "--duck", "-9", "--duck-ramp", "0.3", "--loudness", "-20",
            "--ad-level", "1", "--language", "de", "--container", "mp4", "-f", "vtt",
            "-q"]  # fmt: skip
    result = ({"voice": {"summary": "voiced"}}, [])
    ((a, _),) = _captured(monkeypatch, "locomad_cli.voice.fit", "voice", args, result)
    assert a == ("d/f.mp4", VoiceOptions(
        ad="d/f.ad.json", output_dir="out", tts="piper", voice="v.onnx", rate=150.0,
        max_rate=210.0, overflow="keep", extended=True, subs="s.srt", formats="vtt",
        mix=MixOptions(duck_db=-9.0, ramp=0.3, loudness=-20.0, ad_level=1.0, language="de",
                       container="mp4"),
        progress=False,
    ))  # fmt: skip


def test_every_train_flag_lands_in_its_config(monkeypatch):
    from locomad_cli.train.loop import TrainConfig, TrainResult

    args = ["train", "--stage", "2", "--data", "d", "-o", "o", "-m", "demo", "--set", "a=1",
            "--init", "i", "--resume", "--val-data", "v", "--epochs", "3", "--max-steps", "9",
            "--eval-every", "4", "--save-every", "2", "--keep-last", "1", "--batch-size", "5",
            "--grad-accum", "2", "--lr", "0.001", "--warmup-steps", "7", "--weight-decay", "0.1",
            "--max-grad-norm", "0.5", "--context-dropout", "0.25", "--visual-contrast", "0.5",
            "--rename-names", "n.txt", "--seed", "1", "--mixed-precision", "no",
            "--eval-batch-size", "3", "--val-max-clips", "6", "--num-workers", "0",
            "--threads", "1", "--strict", "--cache-dir", "c", "--log-every", "5", "-q",
            "--tensorboard"]  # fmt: skip
    result = TrainResult(run_dir=Path("o"), step=9, best=None, history=[], is_main=False)
    ((a, _),) = _captured(monkeypatch, "locomad_cli.train.loop", "train", args, result)
    assert a == (TrainConfig(
        stage=2, data="d", out="o", model="demo", overrides=["a=1"], init="i", resume=True,
        val_data="v", epochs=3, max_steps=9, eval_every=4, save_every=2, keep_last=1,
        batch_size=5, grad_accum=2, lr=0.001, warmup_steps=7, weight_decay=0.1,
        max_grad_norm=0.5, context_dropout=0.25, visual_contrast=0.5, rename_names="n.txt",
        seed=1, mixed_precision="no", eval_batch_size=3, val_max_clips=6, num_workers=0,
        strict=True, cache_dir="c", log_every=5, progress=False, tensorboard=True,
    ),)  # fmt: skip


def test_every_demo_train_flag_lands_in_its_config(monkeypatch):
    from locomad_cli.demo.pipeline import DemoTrainConfig

    args = ["demo", "train", "w", "--weights", "x", "--seed", "2", "--films", "30",
            "--extra-films", "4", "--clip-steps", "10", "--clip-hard-negatives", "--s1-epochs",
            "2", "--s2-epochs", "3", "--visual-contrast", "0.5", "--rename-names",
            "--no-measure", "--threads", "2"]  # fmt: skip
    ((a, _),) = _captured(monkeypatch, "locomad_cli.demo.pipeline", "train_demo", args, {})
    assert a == (DemoTrainConfig(
        work="w", weights="x", seed=2, films=30, extra_train=4, clip_steps=10,
        clip_hard_negatives=True, s1_epochs=2, s2_epochs=3, s2_visual_contrast=0.5,
        rename_names=True, measure=False, progress=True, threads=2,
    ),)  # fmt: skip


@pytest.mark.slow
def test_usage_errors_are_one_line_as_a_user_runs_it():
    """click prints a usage error in three lines (usage, hint, error); locomad's rule is one
    line, exit 2, whatever the bad input. The help of a group asked for without a command
    stays click's."""
    from helpers.cli import one_error, run_cli

    for args, words in (
        (["describ", "x.mp4"], ["No such command 'describ'", "describe", "--help"]),
        (["describe", "--bogus", "x.mp4"], ["No such option: --bogus", "describe --help"]),
        (["describe"], ["Missing argument", "describe --help"]),
        (["voice", "x.mp4", "--rate", "abc"], ["Invalid value for '--rate'"]),
    ):
        one_error(run_cli(args), *words)
    res = run_cli(["demo"])
    assert res.returncode == 2 and "Usage:" in res.stdout + res.stderr
    assert run_cli(["--version"]).returncode == 0
