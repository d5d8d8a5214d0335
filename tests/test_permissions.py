"""Permissions, as any user meets them: an input that may not be read, an output folder or a
voice cache that may not be written. Each ends in one line naming the path and what to do,
exit 2, nothing half written; a voice cache made writable again lets the same command finish
as an undisturbed run. The tests run as root here and in CI; helpers.cli.as_user() takes away
root's licence to ignore permissions for the command under test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers.adfilm import make_track, short_film, write_track
from helpers.cli import ROOT, as_user, one_error, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    return short_film(tmp_path_factory.mktemp("perm"))


def no_access(path: Path, mode: int = 0) -> Path:
    os.chmod(path, mode)
    return path


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (temporaries and lock files included) with its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_inputs_that_may_not_be_read(film, tmp_path):
    video, ad = film
    user = as_user()
    unread = no_access(Path(shutil.copy(video, tmp_path / "unread.mp4")))
    subs = tmp_path / "s.srt"
    subs.write_text("1\n00:00:01,000 --> 00:00:02,000\nHello.\n", encoding="utf-8")
    no_access(subs)
    card = no_access(Path(shutil.copy(ROOT / "models" / "demo.yaml", tmp_path / "c.yaml")))
    weights = Path(shutil.copytree(ROOT / "weights" / "demo", tmp_path / "w"))
    model = no_access(weights / "model.safetensors")
    track = no_access(Path(shutil.copy(ad, tmp_path / "t.ad.json")))
    out = tmp_path / "out"
    for args, path, what in (
        (["describe", unread, "-m", "demo"], unread, "not a readable video"),
        (["describe", video, "--subs", subs, "-m", "demo"], subs, "cannot read"),
        (["describe", video, "-m", card], card, "cannot read"),
        (["describe", video, "-m", "demo", "--weights", weights, "--shots", "off"], model,
         "cannot read"),
        (["voice", video, "--ad", track], track, "cannot be read"),
    ):  # fmt: skip
        res = run_cli([*args, "-o", out, "-q"], prefix=user)
        one_error(res, str(path), what, "ermission denied")
        # caches of the film made before the weights are read are whole and kept for a rerun
        caches = (".speech.safetensors", ".features.safetensors", ".shots.json")
        assert [n for n in tree(out) if not n.endswith(caches)] == [], args[0]
    res = run_cli(["evaluate", track, "-r", ad, "--metrics", "bleu"], prefix=user)
    one_error(res, str(track), "cannot read", "ermission denied")


def test_output_folders_that_may_not_be_written(film, tmp_path):
    video, ad = film
    user = as_user()
    ro = tmp_path / "ro"
    ro.mkdir()
    no_access(ro, 0o555)
    for args in (
        ["describe", video, "-m", "demo", "-o", ro, "-q"],
        ["voice", video, "--ad", ad, "-o", ro, "-q"],
        ["extract-features", video, "-m", "demo", "-o", ro, "-q"],
    ):
        one_error(run_cli(args, prefix=user), f"output folder {ro} is not writable")
    one_error(
        run_cli(["evaluate", ad, "-r", ad, "--metrics", "bleu", "-o", ro / "r.json"], prefix=user),
        f"cannot write {ro / 'r.json'}",
        "ermission denied",
    )
    # review keeps its journal and the film's lock beside the track
    shutil.copy(video, ro.parent / "short.mp4")
    shutil.copy(ad, ro.parent / "short.ad.json")
    os.chmod(ro.parent, 0o555)
    try:
        res = run_cli(["review", ro.parent / "short.mp4", "--no-browser"], prefix=user, timeout=60)
        one_error(res, str(ro.parent), "ermission denied")
    finally:
        os.chmod(ro.parent, 0o755)
    assert tree(ro) == {}


def test_a_voice_cache_that_may_not_be_written_then_may(film, tmp_path):
    """The cache of an earlier run made read-only (another user's, a read-only copy): a track
    that needs new speech ends in one line naming the cache entry and how to go on, the
    outputs as they were; writable again, the same command writes an undisturbed run's."""
    video, ad = film
    user = as_user()
    out = tmp_path / "out"
    assert run_cli(["voice", video, "--ad", ad, "-o", out, "-q"], prefix=user).returncode == 0
    slots = [(0.5, 2.5, ["A cat sleeps."]), (3.0, 4.9, ["Rain falls."])]
    (tmp_path / "new").mkdir()
    new = write_track(make_track(video, None, slots), tmp_path / "new" / "short.ad.json")
    cache = out / "short.voice-cache"
    before = tree(out)
    no_access(cache, 0o555)
    try:
        res = run_cli(["voice", video, "--ad", new, "-o", out, "-q"], prefix=user)
    finally:
        os.chmod(cache, 0o755)
    line = one_error(res, f"cannot write {cache}/", "make it writable", "no half-written output")
    assert "free some space" not in line
    assert tree(out) == before
    res = run_cli(["voice", video, "--ad", new, "-o", out, "-q"], prefix=user)
    assert res.returncode == 0, res.stderr
    ref = tmp_path / "ref"
    assert run_cli(["voice", video, "--ad", new, "-o", ref, "-q"]).returncode == 0
    for name in sorted(p.name for p in ref.iterdir() if p.is_file()):
        if not name.endswith(".mkv"):  # Matroska stamps its own creation time
            assert (out / name).read_bytes() == (ref / name).read_bytes(), name
