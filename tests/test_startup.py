"""`locomad --help` and every `locomad CMD --help` start light: no heavy library is imported.

Timings live in benchmarks/startup.py; this asserts the behaviour that makes them small."""

import subprocess
import sys

import pytest
from helpers.media import make_video

HEAVY = (
    "torch torchvision transformers open_clip timm decord accelerate pycocoevalcap bert_score "
    "silero_vad onnxruntime scenedetect h5py safetensors tokenizers huggingface_hub numpy yaml "
    # pydantic: typer validates a group's unset --help flag with it (cli_common.HELP_OPTION); rich:
    # progress bars and tables only; importlib.metadata: only --version and doctor need it
    "pydantic rich importlib.metadata"
).split()

SCRIPT = f"""
import contextlib, io, sys
import typer.main
from locomad_cli.cli import app

root = typer.main.get_command(app)
paths = [[]]
for name, cmd in root.commands.items():
    paths.append([name])
    paths += [[name, sub] for sub in getattr(cmd, "commands", {{}})]
for path in paths:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            app([*path, "--help"], prog_name="locomad")
        except SystemExit as e:
            assert e.code in (0, None), (path, e.code)
    assert "Usage: locomad" in out.getvalue(), path
heavy = {HEAVY!r}
loaded = sorted({{m if m in heavy else m.split(".")[0] for m in sys.modules}} & set(heavy))
print(" ".join(" ".join(p) or "(root)" for p in paths))
print("loaded:", " ".join(loaded))
"""


@pytest.mark.slow
def test_every_help_screen_imports_no_heavy_library():
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    shown, loaded = res.stdout.strip().splitlines()[-2:]
    for path in ("(root)", "describe", "extract-features", "train", "evaluate", "voice"):
        assert path in shown.split(" ")
    for path in ("demo measure", "demo probe", "demo make-data", "demo train"):
        assert path in shown
    assert loaded == "loaded:", loaded


@pytest.mark.slow
def test_console_module_help_as_a_user_runs_it():
    """`python -m locomad_cli --help`: the same screen, exit 0, nothing heavy on the way."""
    code = (
        "import runpy, sys\n"
        "sys.argv = ['locomad', 'describe', '--help']\n"
        "try:\n"
        "    runpy.run_module('locomad_cli', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        f"heavy = {HEAVY!r}\n"
        "names = {m if m in heavy else m.split('.')[0] for m in sys.modules}\n"
        "print('loaded:', ' '.join(sorted(names & set(heavy))))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--threads N" in res.stdout
    assert res.stdout.strip().splitlines()[-1] == "loaded:"


FIRST_FRAME = """
import sys
import decord

def note(name):
    read = getattr(decord.VideoReader, name)

    def noted(self, *a, **k):
        out = read(self, *a, **k)
        if not hasattr(decord, "_loaded_at_first_frame"):
            decord._loaded_at_first_frame = sorted({m.split(".")[0] for m in sys.modules} & HEAVY)
        return out

    setattr(decord.VideoReader, name, noted)

for name in ("get_batch", "__getitem__", "next"):
    note(name)
sys.argv[0] = "locomad"
from locomad_cli.cli import main
try:
    main()
finally:
    print("at first frame:", " ".join(decord._loaded_at_first_frame), file=sys.stderr)
"""


@pytest.mark.slow
def test_extract_features_decodes_its_first_frame_before_torch_loads(tmp_path, card):
    """The films are read (frame index, first frame) before torch and open_clip load, so a
    film that cannot be decoded is said before seconds of imports, and the features are the
    same as ever (test_features compares them)."""
    film = make_video(tmp_path / "film.mp4", duration=2.0)
    (tmp_path / "tiny.yaml").write_text(card.to_yaml())
    heavy = {"torch", "open_clip", "torchvision", "transformers", "timm"}
    code = f"HEAVY = {heavy!r}\n" + FIRST_FRAME
    cmd = [sys.executable, "-c", code, "extract-features", str(film), "-q"]
    cmd += ["--model", str(tmp_path / "tiny.yaml"), "-o", str(tmp_path / "out")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().splitlines()[-1] == "at first frame:"
    assert (tmp_path / "out" / "film.features.safetensors").is_file()


def test_the_clip_input_side_comes_from_the_card_alone(card):
    from locomad_cli.card import load_card
    from locomad_cli.features.clip import input_side, load_clip

    assert input_side(card) == load_clip(card, load_weights=False).decode_short_side == 32
    assert input_side(load_card("demo")) == 64
    assert input_side(load_card("opt-2.7b")) == 224  # open_clip's bundled ViT-L-14 config
    assert input_side(load_card("opt-2.7b", ["clip.model=hf-hub:org/none"])) is None


@pytest.mark.slow
@pytest.mark.parametrize("guess", [None, 40])
def test_a_film_planned_at_a_wrong_size_is_planned_again(tmp_path, card, monkeypatch, guess):
    """When the card cannot tell the CLIP's input size (or tells wrong), the films are read
    again at the built encoder's size: the features do not change."""
    import torch

    from locomad_cli.features import extract

    film = make_video(tmp_path / "film.mp4", duration=2.0)
    kw = dict(device="cpu", chunk_frames=4)
    right = extract.extract_features([film], card, out_dir=tmp_path / "a", **kw)
    monkeypatch.setattr(extract, "input_side", lambda card: guess)
    again = extract.extract_features([film], card, out_dir=tmp_path / "b", **kw)
    a, _ = extract.load_features(right[0].output)
    b, meta = extract.load_features(again[0].output)
    assert meta["decode_size"] == extract.load_features(right[0].output)[1]["decode_size"]
    assert torch.equal(a, b)
