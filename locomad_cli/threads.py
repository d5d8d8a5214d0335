"""How many threads torch's CPU work gets: one policy for every command that runs torch.

torch starts an OpenMP pool with a thread per core and keeps those threads spinning between
operations. When the cores are also busy with something else (our own decode thread, another
process), the pool's threads wait on each other for a core and every operation slows down many
times over; one thread only loses a share of its core. So the default gives torch the cores
that nothing else is using (the load average tells), at least one, and counts a decode thread
in. `--threads N` or an explicit OMP_NUM_THREADS overrides it. Figures: docs/performance.md
("Threads").
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from locomad_cli.utils import LocomadError

MAX_THREADS = 1024
"""More than any machine's cores: a bigger --threads is a typo."""


def parse_threads(value: str | int | None) -> int | None:
    """`--threads` as a whole number of at least 1 (None: not given); LocomadError else."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_THREADS:
        raise LocomadError(
            f"--threads must be a whole number from 1 to {MAX_THREADS}, got '{text}'"
        )
    return n


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (containers and taskset narrow it),
    not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _load() -> float:
    """Threads of other processes that wanted a core over the last minute: the 1-minute load
    average (0 where the system cannot say) less this process's own share, so that a long run
    (describe over many films) does not read its own busy threads as someone else's."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    return max(0.0, load - own_load())


def own_load() -> float:
    """About what this process adds to the 1-minute load average: its CPU seconds per second
    of life, times 1 - e^(-age/60) (the kernel's average forgets with a 1-minute constant, so
    a young process has barely entered it). 0 where /proc cannot say."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0
    age = uptime - int(stat[19]) / ticks  # field 22, starttime, counted after the name
    if age <= 0:
        return 0.0
    cpu = sum(os.times()[:2])
    return min(cpu / age, float(available_cores())) * (1.0 - math.exp(-age / 60.0))


def _env_threads(env: Mapping[str, str]) -> int | None:
    try:
        n = int(env.get("OMP_NUM_THREADS", "").strip())
    except ValueError:
        return None
    return n if n >= 1 else None


def pick_threads(
    requested: int | None,
    decoding: bool | int,
    device: str,
    *,
    cores: int | None = None,
    load: float | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """torch's intra-op thread count for a command.

    `requested` (--threads) wins, then OMP_NUM_THREADS. Otherwise, on the CPU: the cores
    that the load average leaves free, at least 1, and a core fewer for each decode thread
    that runs beside the model (`decoding`: True for one, or how many). On a GPU the pool
    only runs glue between kernels: every core, less the decoders'. `cores`, `load` and `env`
    default to this machine's."""
    if requested is not None:
        if requested < 1:
            raise LocomadError(f"--threads must be at least 1, got {requested}")
        return requested
    explicit = _env_threads(os.environ if env is None else env)
    if explicit is not None:
        return explicit
    cores = available_cores() if cores is None else max(1, cores)
    n = cores
    if device == "cpu":
        busy = _load() if load is None else max(0.0, load)
        n = cores - int(busy + 0.5)
    if decoding:
        n = min(n, cores - int(decoding))
    return max(1, min(n, cores))


@contextlib.contextmanager
def torch_threads(requested: int | None, decoding: bool | int, device: str) -> Iterator[int]:
    """Run the block with pick_threads' count set in torch, then put the caller's back (a
    library caller or a test keeps its own setting). `device` may be 'auto'. Yields it."""
    import torch

    from locomad_cli.utils import resolve_device

    device = resolve_device(device) if device == "auto" else device
    n = pick_threads(requested, decoding, device.split(":")[0])
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
