"""torch's CPU threads: one policy (threads.py), and --threads on every command that runs torch."""

import subprocess
import sys

import pytest
import torch
from helpers.media import make_video
from safetensors.torch import save_file
from typer.testing import CliRunner

from locomad_cli.cli import app
from locomad_cli.features.clip import ClipEncoder
from locomad_cli.model.checkpoint import save_model
from locomad_cli.model.locomad import LoCoMAD
from locomad_cli.threads import (
    available_cores,
    own_load,
    parse_threads,
    pick_threads,
    torch_threads,
)
from locomad_cli.utils import LocomadError

runner = CliRunner()

TORCH_COMMANDS = [
    ["describe", "film.mp4"],
    ["extract-features", "film.mp4"],
    ["train", "--stage", "1", "--data", "data", "--out", "run"],
    ["evaluate", "film.ad.srt", "--reference", "film.ref.srt"],
    ["demo", "make-data", "data"],
    ["demo", "train-clip", "data"],
    ["demo", "features", "data"],
    ["demo", "train", "work"],
    ["demo", "measure", "data"],
    ["demo", "probe", "data"],
]


@pytest.fixture
def two_threads():
    """torch at 2 threads for the test (so a command's 1 is visible), then as it was."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_requested_wins_over_the_environment_and_the_load():
    env = {"OMP_NUM_THREADS": "1"}
    assert pick_threads(3, decoding=True, device="cpu", cores=2, load=9.0, env=env) == 3
    with pytest.raises(LocomadError, match="--threads must be at least 1"):
        pick_threads(0, decoding=False, device="cpu", cores=2, load=0.0, env={})


def test_an_explicit_omp_num_threads_is_honoured():
    assert pick_threads(None, True, "cpu", cores=8, load=0.0, env={"OMP_NUM_THREADS": "5"}) == 5
    # not a count: ignored, the policy decides
    assert pick_threads(None, False, "cpu", cores=8, load=0.0, env={"OMP_NUM_THREADS": "x"}) == 8


@pytest.mark.parametrize(
    ("cores", "load", "decoding", "want"),
    [
        (2, 0.0, False, 2),  # a quiet machine: every core
        (2, 0.0, True, 1),  # one core to the decode thread
        (2, 1.2, False, 1),  # one core busy elsewhere
        (2, 9.0, False, 1),  # a busy machine: one thread, never zero
        (2, 9.0, True, 1),
        (16, 0.3, True, 15),
        (16, 10.0, False, 6),
        (16, 10.0, True, 6),
        (16, 0.0, 3, 13),  # three decode threads counted in
        (1, 0.0, True, 1),
    ],
)
def test_the_cpu_default_takes_the_free_cores(cores, load, decoding, want):
    assert pick_threads(None, decoding, "cpu", cores=cores, load=load, env={}) == want


def test_on_a_gpu_the_load_does_not_matter_but_the_decoder_does():
    assert pick_threads(None, True, "cuda", cores=16, load=30.0, env={}) == 15
    assert pick_threads(None, False, "cuda", cores=16, load=30.0, env={}) == 16


@pytest.mark.slow
def test_a_process_discounts_its_own_share_of_the_load():
    """A fresh process has not entered the load average yet; a long one (this test run) adds
    at most a full share per core it may use."""
    code = "from locomad_cli.threads import own_load; print(own_load())"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert 0.0 <= float(fresh.stdout) < 0.1
    assert 0.0 <= own_load() <= available_cores()


@pytest.mark.parametrize("bad", ["0", "-1", "x", "1.5", "", " ", "2000"])
def test_parse_threads_refuses_what_is_not_a_count(bad):
    with pytest.raises(LocomadError, match="--threads must be a whole number from 1 to 1024"):
        parse_threads(bad)


def test_parse_threads():
    assert parse_threads(None) is None
    assert parse_threads("3") == 3 and parse_threads(" 2 ") == 2 and parse_threads(4) == 4


def test_torch_threads_sets_the_count_then_puts_the_callers_back(two_threads):
    with torch_threads(1, decoding=False, device="cpu") as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("command", TORCH_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_torch_command_takes_threads_and_refuses_bad_ones(command, tmp_path):
    name = command[:2] if command[0] == "demo" else command[:1]
    assert "--threads N" in runner.invoke(app, [*name, "--help"]).stdout
    for bad in ("0", "-1", "x"):
        res = runner.invoke(app, [*command, "--threads", bad])
        assert res.exit_code == 2, (command, bad, res.output)
        assert res.stderr.strip().splitlines() == [
            f"locomad: error: --threads must be a whole number from 1 to 1024, got '{bad}'"
        ]


@pytest.mark.slow
def test_bad_threads_as_a_user_runs_it(tmp_path):
    code = "from locomad_cli.cli import main; main()"
    cmd = [sys.executable, "-c", code, "describe", str(tmp_path / "f.mp4"), "--threads", "x"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "locomad: error: --threads must be a whole number from 1 to 1024, got 'x'"
    )


def _recording_encoder(monkeypatch) -> list[int]:
    """ClipEncoder.encode_images notes torch's thread count each time a command encodes."""
    seen: list[int] = []
    encode = ClipEncoder.encode_images

    def recording(self, images):
        seen.append(torch.get_num_threads())
        return encode(self, images)

    monkeypatch.setattr(ClipEncoder, "encode_images", recording)
    return seen


@pytest.mark.slow
def test_extract_features_threads_1_sets_torch_while_encoding(
    tmp_path, card, monkeypatch, two_threads
):
    film = make_video(tmp_path / "film.mp4", duration=2.0)
    (tmp_path / "tiny.yaml").write_text(card.to_yaml())
    seen = _recording_encoder(monkeypatch)
    args = ["extract-features", str(film), "--model", str(tmp_path / "tiny.yaml")]
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "out"), "-q", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2  # the caller's count is back


def test_describe_threads_1_sets_torch_while_describing(tmp_path, card, monkeypatch, two_threads):
    card.llm.max_new_tokens = 3
    (tmp_path / "tiny.yaml").write_text(card.to_yaml())
    torch.manual_seed(0)
    save_model(LoCoMAD.from_card(card, pretrained=False), tmp_path / "weights")
    feats = torch.randn(50, card.clip.dim).half()
    meta = {"fps": "5", "duration": "10", "clip_model": card.clip.model, "frames": "50"}
    save_file({"features": feats}, str(tmp_path / "film.features.safetensors"), metadata=meta)
    (tmp_path / "slots.srt").write_text(
        "1\n00:00:01,000 --> 00:00:03,000\n\n2\n00:00:05,000 --> 00:00:07,000\n"
    )
    seen: list[int] = []
    monkeypatch.setattr(
        "locomad_cli.cli._print_description", lambda *a, **k: seen.append(torch.get_num_threads())
    )
    args = ["describe", str(tmp_path / "film.mp4"), "--model", str(tmp_path / "tiny.yaml")]
    args += ["--weights", str(tmp_path / "weights"), "--device", "cpu", "-q"]
    args += ["--features", str(tmp_path / "film.features.safetensors")]
    args += ["--ad-times", str(tmp_path / "slots.srt"), "-o", str(tmp_path / "out")]
    res = runner.invoke(app, [*args, "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert seen == [1, 1]
    assert torch.get_num_threads() == 2
