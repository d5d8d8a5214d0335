"""Several films in one command: folders expanded in a stable order, and each process's share
under a launcher (locomad_cli/films.py)."""

import pytest

from locomad_cli.films import beside, expand_films, rank_and_world, share
from locomad_cli.utils import LocomadError


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"x")
    return folder


def test_folders_become_their_films_sorted_by_name(tmp_path):
    films = _touch(
        tmp_path / "films",
        "b.mkv",
        "a.MP4",
        "c.webm",
        "a.srt",
        "a.ad-times.srt",
        "a.features.safetensors",
        "c.described.mkv",  # what `voice` writes: not a film to describe
    )
    _touch(films / "sub", "d.mp4")  # sub-folders are not entered
    other = _touch(tmp_path / "other", "z.mov")
    got = expand_films([other / "z.mov", films, films / "b.mkv"])
    # the file given first stays first; b.mkv named twice counts once
    assert [p.name for p in got] == ["z.mov", "a.MP4", "b.mkv", "c.webm"]


def test_a_missing_file_is_kept_for_describe_to_report(tmp_path):
    assert expand_films([tmp_path / "nope.mp4"]) == [tmp_path / "nope.mp4"]


def test_a_folder_without_films_is_refused(tmp_path):
    with pytest.raises(LocomadError, match="a folder with no film in it"):
        expand_films([_touch(tmp_path / "empty", "notes.txt")])
    with pytest.raises(LocomadError, match="no film given"):
        expand_films([])


def test_share_is_round_robin_by_rank(monkeypatch):
    films = ["a", "b", "c", "d", "e"]
    assert share(films) == films  # a plain run: all of them
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # what a launcher sets beside WORLD_SIZE
    monkeypatch.setenv("WORLD_SIZE", "2")
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        shares.append(share(films))
    assert shares == [["a", "c", "e"], ["b", "d"]]
    monkeypatch.setenv("WORLD_SIZE", "7")
    monkeypatch.setenv("RANK", "6")
    assert share(films) == []  # more processes than films: nothing to do


def test_bad_launcher_environment_is_one_error(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(LocomadError, match="bad RANK=2 / WORLD_SIZE=2"):
        rank_and_world()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(LocomadError, match="whole numbers"):
        rank_and_world()


def test_world_size_without_a_launcher_is_refused(monkeypatch):
    """A WORLD_SIZE left exported in a shell would make a plain run describe half the films."""
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(LocomadError, match="WORLD_SIZE=2 is set but no launcher .* unset"):
        share(["a", "b", "c"])
    monkeypatch.setenv("WORLD_SIZE", "1")  # a launcher's single process: no MASTER_ADDR needed
    assert share(["a", "b", "c"]) == ["a", "b", "c"]


def test_beside_finds_the_first_sidecar(tmp_path):
    _touch(tmp_path, "film.mp4", "film.vtt", "film.ad-times.csv")
    film = tmp_path / "film.mp4"
    assert beside(film, (".srt", ".vtt")) == tmp_path / "film.vtt"
    assert beside(film, (".ad-times.srt", ".ad-times.csv")) == tmp_path / "film.ad-times.csv"
    assert beside(film, (".ad.srt",)) is None
