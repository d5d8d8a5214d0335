"""The one progress bar (locomad_cli/progress.py): drawn only when asked and stderr is a
terminal."""

from locomad_cli.progress import progress_bar


def _run(show: bool) -> None:
    with progress_bar("work", 3, show=show, unit="things") as update:
        for i in range(4):
            update(i, note=f"step {i}")


def test_nothing_is_drawn_off_a_terminal_or_when_not_asked(capsys, monkeypatch):
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    _run(show=True)  # stderr is pytest's capture, not a terminal
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich's way to say: a terminal
    _run(show=False)
    assert capsys.readouterr() == ("", "")


def test_on_a_terminal_the_bar_counts_the_work(capsys, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    _run(show=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "work" in err and "3/3" in err and "things/s" in err and "step 3" in err
