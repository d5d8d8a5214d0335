"""locomad: audio-description tracks for films with the LoCo-MAD model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("locomad")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.1.0"
