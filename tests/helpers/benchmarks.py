"""The scripts of benchmarks/ as modules, for the tests that keep them runnable and for the
pieces a test shares with them (the Qwen chat template a locally built processor carries)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py, imported as `locomad_benchmark_NAME` (the folder is no package;
    its scripts import each other by name, so it goes on sys.path, as when they run)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(
        f"locomad_benchmark_{name}", BENCHMARKS / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
