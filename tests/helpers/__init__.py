"""Shared builders for the tests (no tests here). `tests/conftest.py` puts `tests/` on sys.path,
so a test imports them as `from helpers.media import make_video`.

- `media`: short videos and audio made on the spot with ffmpeg.
- `adfilm`: a short film with programme audio and AD tracks for it (voice and mix tests).
- `demo_films`: two short demo-world films with their truth (slot, speech and shot tests).
- `demo_cuts`: short films cut from the shipped demo film, laid out as a folder of films.
- `batches`: tiny clip records and batches for the model tests.
- `datasets`: small datasets in the upstream layouts (data and training tests).
- `srt`: SRT text from (start, end, text) cues, with the package's own timestamp writer.
- `ports`: a free loopback port for launchers and servers.
"""
