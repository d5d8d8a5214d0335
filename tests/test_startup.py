"""`locomad --help` and every `locomad CMD --help` start light: no heavy library is imported.

Timings live in benchmarks/startup.py; this asserts the behaviour that makes them small."""

import subprocess
import sys

HEAVY = (
    "torch torchvision transformers open_clip timm decord accelerate pycocoevalcap bert_score "
    "silero_vad onnxruntime scenedetect h5py safetensors tokenizers huggingface_hub numpy yaml "
    # pydantic: typer validates a group's unset --help flag with it (cli.HELP_OPTION); rich:
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
