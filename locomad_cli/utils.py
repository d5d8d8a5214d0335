"""Small shared helpers: the user-error type, atomic writes, device and dtype choice."""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse


class LocomadError(Exception):
    """A problem with the user's input or environment: the CLI prints it as one line on
    stderr and exits with code 2, without a traceback."""


EXIT_USER = 2
"""Exit code of a LocomadError: bad input or a missing resource, the user can fix it."""
EXIT_INTERNAL = 70
"""Exit code of any other exception: a bug in locomad (70 is sysexits' EX_SOFTWARE)."""
DEBUG_ENV = "LOCOMAD_DEBUG"
"""Set to 1 (or pass --debug) to see the traceback of an internal error."""

MAX_SECONDS = 7 * 24 * 3600.0
"""The largest time accepted anywhere (a week): bigger values are typos or garbage, and
would overflow the frame arithmetic long before any film is that long."""


def check_seconds(value: float, what: str = "time") -> float:
    """`value` as a float when it is a finite time of sane size, else ValueError (readers turn
    it into their own file:line error). NaN and infinity pass every `<`/`>` check silently,
    hence this one place that refuses them."""
    try:
        x = float(value)
    except (OverflowError, ValueError, TypeError):
        raise ValueError(f"{what} {str(value)[:40]!r} is not a number of seconds") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} {x} is not a finite number of seconds")
    if abs(x) > MAX_SECONDS:
        raise ValueError(f"{what} {x:.4g} s is longer than any film (at most {MAX_SECONDS:g} s)")
    return x


WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file is larger than this system allows",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.EIO: "input/output error",
}
"""OS errors that say something about the machine, not about locomad: reported in one line."""


TOOL_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
"""Write errors that an external tool (ffmpeg) reports only in its stderr text, sometimes with
exit code 0 (ffmpeg's Matroska muxer on a full disk): looked for by `tool_write_error`."""

TEMP_SUFFIX = ".locomad.tmp"
"""Every temporary file or folder locomad makes beside an output is named
`.NAME.PID-RANDOM.locomad.tmp`: recognizably ours, with the process that owns it, so a rerun
removes what a killed run left (`sweep_temps`) and never anything else."""
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]+" + re.escape(TEMP_SUFFIX) + "$")


def temp_prefix(name: str) -> str:
    """mkstemp/mkdtemp prefix of a temporary beside the output `name` (see TEMP_SUFFIX)."""
    return f".{name}.{os.getpid()}-"


def final_name(path: str | Path) -> Path:
    """The output a temporary of ours stands for (the path itself for any other name)."""
    path = Path(path)
    m = _TEMP_RE.match(path.name)
    return path.with_name(m.group("name")) if m else path


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process: alive
    return True


def sweep_temps(folder: str | Path, name: str | None = None) -> int:
    """Remove the temporaries a killed locomad left in `folder` (only `name`'s with a name):
    only entries with our naming whose process is gone. Returns how many were removed."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or (name is not None and m.group("name") != name):
            continue
        if _alive(int(m.group("pid"))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
    return removed


def _disk_of(path: Path) -> str:
    """'MOUNT has N free' for the file system holding `path` (its nearest existing folder)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return ""
    mount = p
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    free = st.f_bavail * st.f_frsize
    size = f"{free} bytes"
    for i, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if free >= 1024**i:
            size = f"{free / 1024**i:.1f} {unit}"
            break
    return f"{mount} has {size} free"


def os_error_line(e: OSError, path: str | Path | None = None) -> str | None:
    """One line for an OSError of the kinds in WRITE_ERRNOS (None for any other): which file
    (`path`, the file meant, rather than the temporary one the error names), what happened,
    and for a full disk which disk it is and what it has left."""
    why = WRITE_ERRNOS.get(e.errno or 0)
    if why is None:
        return None
    where = path if path is not None else (final_name(e.filename) if e.filename else None)
    detail = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and where:
        disk = _disk_of(Path(where))
        detail += f"; {disk}" if disk else ""
    if not where:
        return f"{why} ({e})"
    return f"cannot {_verb(e, Path(where))} {where}: {why} ({detail})"


def _verb(e: OSError, where: Path) -> str:
    """What could not be done to `where`: a permission error does not say whether it came
    from reading or writing, the file and its folder do (checks that never raise)."""
    if e.errno not in (errno.EACCES, errno.EPERM):
        return "write"
    if not os.access(where.parent, os.X_OK):
        return "open"  # a folder on the way may not be entered
    if os.path.lexists(where) and not os.access(where, os.R_OK):
        return "read"
    return "write"


_PATH_ERRNOS = {
    errno.ENAMETOOLONG: "the name is too long for the file system (shorten the film's name, "
    "or rename a copy of it)",
    errno.EISDIR: "a folder is in the way where a file should be (move it, or write the "
    "output elsewhere)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "something is already in the way there",
    errno.ENOENT: "no such file or folder",
    errno.ELOOP: "too many symbolic links",
    errno.ENOTEMPTY: "a folder is in the way and is not empty",
    errno.EXDEV: "cannot move across file systems",
    errno.ETXTBSY: "the file is busy",
    errno.EBUSY: "the file or folder is busy",
}
"""OS errors about a path the user handed in (or an output named after it)."""


def path_error_line(e: OSError) -> str | None:
    """One line for an OSError about a user's path (too long a name, a folder where a file
    goes, a broken pipe on stdout), None for anything else (a bug of ours)."""
    if isinstance(e, BrokenPipeError):
        return "stdout was closed before every result was printed (a pipe ended early)"
    why = _PATH_ERRNOS.get(e.errno or 0)
    if why is None or not e.filename:
        return None
    where = final_name(str(e.filename))
    if e.errno == errno.ENAMETOOLONG:
        where = f"{str(where)[:60]}...{str(where)[-20:]}" if len(str(where)) > 90 else where
    return f"cannot use {where}: {why} ({e.strerror or e})"


def tool_write_error(stderr: str, out: str | Path) -> OSError | None:
    """The write error an external tool's `stderr` reports for its output `out`, if any (as
    the OSError Python would have raised): ffmpeg may exit 0 after a full disk cut its file."""
    for code in TOOL_WRITE_ERRNOS:
        if os.strerror(code) in stderr:
            return OSError(code, os.strerror(code), str(final_name(out)))
    return None


@contextlib.contextmanager
def write_errors(path: str | Path, hint: str = "") -> Iterator[None]:
    """Turn disk-full, quota and permission errors while writing `path` into a LocomadError
    (one line, exit 2); `hint` says what to do next (e.g. how to resume)."""
    try:
        yield
    except OSError as e:
        line = os_error_line(e, path)
        if line is None:
            raise
        raise LocomadError(line + (f"; {hint}" if hint else "")) from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure
    remove it. Readers never see a half-written file; temporaries a killed run left for the
    same `path` are removed first (sweep_temps)."""
    path = _writable_target(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); the result should have the permissions any
    # other file the user writes has (a WebVTT track is served by a web server, say)
    mode = 0o666 & ~_umask()
    try:
        os.chmod(tmp_path, mode)
        yield tmp_path
        # again: some writers (safetensors' save_file) replace the file with a private one
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(e, OSError) and e.errno and not e.filename:
            # a write to an open file names no file (wave, json.dump): name the output
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


_SPECIAL = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def _writable_target(path: Path) -> Path:
    """Where an output named `path` is renamed to. A symbolic link is written through (the
    link stays, its target is replaced); a device, pipe or socket is refused: a rename
    would put a plain file in its place (as root, `-o /dev/null` would replace the system's
    /dev/null), and writing into one is not writing an output file."""
    if not os.path.lexists(path):
        return path
    real = Path(os.path.realpath(path))
    try:
        mode = os.stat(real).st_mode
    except OSError:
        return real  # a link to nothing yet: the file is made where it points
    for test, what in _SPECIAL:
        if test(mode):
            shown = f"{path} (-> {real})" if real != path.absolute() else str(path)
            raise LocomadError(f"{shown} is {what}, not a file: name a file to write")
    return real


def replace_dir(tmp: Path, final: Path) -> None:
    """Put a finished folder in place: readers see the old one or the new one, never half."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (replace_dir),
    on failure it is removed. For model and tokenizer folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temps(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folder is private (0700)
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def readable(path: str | Path) -> Path:
    """`path`, after opening it for reading once: safetensors reports every failure to open a
    file (permission denied included) as 'No such file or directory', so the real OSError is
    raised here first (one line through the CLI's OSError handling)."""
    with open(path, "rb"):
        pass
    return Path(path)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """`open()` that writes to a temporary file and renames it into place on success."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def tool_path(path: str | Path) -> str:
    """`path` as an argument to a command-line tool: a relative name starting with '-'
    (a film called `-dash.mp4`) would be read as an option, so it gets a leading './'."""
    text = str(path)
    return f"./{text}" if text.startswith("-") else text


def check_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and make sure we can write there, or raise LocomadError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".locomad-probe-"):
            pass
    except OSError as e:
        raise LocomadError(f"output folder {path} is not writable: {e.strerror or e}") from None
    return path


def resolve_device(device: str = "auto") -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'. Any other name is checked here,
    once: a device torch does not know, or one this machine has not got, is one line
    (torch's own errors come later, from deep inside a model, after work was done)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise LocomadError(
            f"--device {device!r} is no device (write cpu, cuda, cuda:N, mps or auto)"
        ) from None
    if kind.type == "cuda":
        if not torch.cuda.is_available():
            raise LocomadError(f"--device {device} asked for, but torch sees no CUDA GPU")
        if kind.index is not None and kind.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise LocomadError(f"--device {device}: this machine has {n} CUDA GPU(s) (0-{n - 1})")
    elif kind.type == "mps":
        if not torch.backends.mps.is_available():
            raise LocomadError(f"--device {device}: no Apple MPS device on this machine")
    elif kind.type != "cpu":
        raise LocomadError(f"--device {device}: locomad runs on cpu, cuda or mps")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """'auto' → bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in table:
        raise LocomadError(f"unknown dtype '{dtype}' (choose auto, fp32, fp16, bf16)")
    return table[dtype]


def parse_choice_list(spec: str | list[str], choices: list[str], what: str) -> list[str]:
    """'a,b' (or a list) → the named choices in order, without repeats; 'all' → every choice.
    Anything unknown, or nothing at all, is refused in one line naming the choices."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip().lower() for n in names if n.strip()]
    if "all" in names:
        return list(choices)
    bad = [n for n in names if n not in choices]
    if bad or not names:
        shown = ",".join(bad) or (spec if isinstance(spec, str) else ",".join(spec))
        raise LocomadError(f"unknown {what} '{shown}' (choose from {', '.join(choices)}, all)")
    return list(dict.fromkeys(names))


def hub_offline_hint(name: str) -> str:
    return (
        f"'{name}' is not a local folder and the Hugging Face hub is unreachable or the "
        "weights are not in the local cache; download it on a connected machine "
        "(huggingface-cli download) or point the model card at a local copy"
    )


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers at all. Checked once per process because
    huggingface_hub retries an unreachable host for ~50 s before giving up; knowing up front
    lets every loader ask the local cache only and fail at once with a clear line."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def hf_load_kwargs(name: str | Path) -> dict[str, Any]:
    """Extra `from_pretrained` arguments for `name`: none for a local folder or a reachable
    hub, `local_files_only=True` otherwise (use the cache, fail fast)."""
    if Path(str(name)).expanduser().exists() or hub_reachable():
        return {}
    return {"local_files_only": True}


def hub_cached(repo: str, files: tuple[str, ...] = ("config.json",)) -> str | None:
    """The local cache path of the first of `files` of hub repo `repo`, or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in files:
        try:
            hit = try_to_load_from_cache(repo, name)
        except Exception:  # an id the hub library refuses (not a repo name at all)
            return None
        if isinstance(hit, str):
            return hit
    return None
