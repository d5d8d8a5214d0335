"""Ranges of numeric options, checked before a run starts: a NaN, an infinity or a number out
of range is refused in one line naming the flag, instead of failing deep in the run (or
running wrongly). Plain Python: the demo's data options use it too."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

from locomad_cli.utils import LocomadError

MAX_SEED = 2**32 - 1
"""numpy's and Accelerate's set_seed take seeds in 0 .. 2**32 - 1."""
WHOLE = "a whole number"


class Bound(NamedTuple):
    """A number's range: ends included unless marked open; `what` names the kind."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    what: str = "a number"


def _shown(x: Any) -> str:
    """A number as a user typed it: integers whole, floats short (1e-05, nan)."""
    return f"{x:g}" if isinstance(x, float) else str(x)


def _range_text(b: Bound) -> str:
    low, high = _shown(b.low), _shown(b.high)
    if b.high == math.inf:
        return f"{'>' if b.low_open else '>='} {low}"
    return f"in {'(' if b.low_open else '['}{low}, {high}{')' if b.high_open else ']'}"


def check_number(flag: str, value: Any, bound: Bound) -> None:
    """`value` within `bound`, else one line: '--lr is a number > 0, got nan'."""
    whole = bound.what == WHOLE
    kind = numbers.Integral if whole else numbers.Real
    ok_type = isinstance(value, kind) and not isinstance(value, bool)
    if ok_type and math.isfinite(value):
        low_ok = value > bound.low if bound.low_open else value >= bound.low
        high_ok = value < bound.high if bound.high_open else value <= bound.high
        if low_ok and high_ok:
            return
    raise LocomadError(f"{flag} is {bound.what} {_range_text(bound)}, got {_shown(value)}")


def check_fields(
    options: Any,
    bounds: Mapping[str, Bound],
    optional: set[str] | frozenset[str] = frozenset(),
    flags: Mapping[str, str] | None = None,
) -> None:
    """Every field of an options dataclass named in `bounds` within its range; a field in
    `optional` may be None (its default). The flag is `--field-name` unless `flags` says."""
    for name, bound in bounds.items():
        value = getattr(options, name)
        if value is None and name in optional:
            continue
        flag = (flags or {}).get(name) or "--" + name.replace("_", "-")
        check_number(flag, value, bound)
