"""`locomad doctor`: what this machine can and cannot do, before a long run finds out."""

from __future__ import annotations

import shutil
import subprocess

from locomad_cli.card import load_card
from locomad_cli.utils import hub_reachable


def _version_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else ""


def run_checks(model: str = "opt-2.7b") -> list[tuple[str, bool, str]]:
    """Return (check, ok, details) rows; never raises for a missing tool, only for a bad card."""
    rows: list[tuple[str, bool, str]] = []
    for tool in ("ffmpeg", "ffprobe"):
        path = shutil.which(tool)
        details = _version_line([tool, "-version"]) if path else "not on PATH"
        rows.append((tool, bool(path), details))
    try:
        import decord

        rows.append(("decord", True, f"decord {decord.__version__}"))
    except ImportError as e:
        rows.append(("decord", False, f"not importable: {e}"))
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        rows.append(("torch device", True, f"torch {torch.__version__}, CUDA: {name}"))
    else:
        rows.append(("torch device", True, f"torch {torch.__version__}, CPU only (no CUDA GPU)"))
    java = shutil.which("java")
    rows.append(
        ("java (METEOR)", bool(java), _version_line(["java", "-version"]) if java else "not found")
    )
    hub = hub_reachable()
    rows.append(("model hub", hub, "huggingface.co reachable" if hub else "unreachable (offline)"))
    card = load_card(model)
    wpath = card.weights_path()
    if wpath is not None and wpath.exists():
        rows.append((f"weights ({card.name})", True, str(wpath)))
    else:
        where = str(wpath) if wpath else "none named in the card"
        rows.append((f"weights ({card.name})", False, f"not found locally: {where}"))
    return rows
