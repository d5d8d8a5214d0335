"""locomad: audio-description tracks for films with the LoCo-MAD model."""


def __getattr__(name: str) -> str:
    """`__version__` on first use: importlib.metadata costs every `locomad --help` a third of
    its start-up (benchmarks/startup.py), and most runs never ask for the version."""
    if name != "__version__":
        raise AttributeError(f"module 'locomad_cli' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("locomad")
    except PackageNotFoundError:  # running from a source tree without install
        value = "0.1.0"
    globals()["__version__"] = value
    return value
