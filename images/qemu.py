"""qemu-img, always with an explicit format and under CPU/memory limits (prlimit).

Never hand a file to qemu-img before ``images.inspection.inspect_file`` vouched for it:
qemu-img follows backing files and external data files when it is allowed to probe.

The text of a ``QemuImgError`` is shown to users (an image's failure reason): it never names a file of
the server, neither the paths qemu-img was given nor any other absolute path it mentions.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from portal.redaction import without_server_paths

QEMU_IMG = "qemu-img"
PRLIMIT = "prlimit"
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
_PROGRAM = re.compile(r"^qemu-img: ", re.MULTILINE)
_COULD_NOT_OPEN = re.compile(r"Could not open '[^']*': ")


class QemuImgError(Exception):
    pass


def _error(text: bytes | str, *paths: Path, fallback: str) -> QemuImgError:
    """qemu-img's complaint without the program name and without server paths ("Could not open '/x/y': …")."""
    message = text.decode(errors="replace") if isinstance(text, bytes) else text
    message = _COULD_NOT_OPEN.sub("", _PROGRAM.sub("", message))
    for path in paths:
        message = message.replace(str(path), "…")
    message = without_server_paths(message).strip()
    return QemuImgError(message or fallback)


def _limited(argv: list[str], *, convert: bool = False) -> list[str]:
    limits = settings.LABCLOUD_QEMU_IMG_LIMITS
    memory = limits["convert_address_space_bytes" if convert else "address_space_bytes"]
    cpu = limits["convert_cpu_seconds" if convert else "info_cpu_seconds"]
    return [PRLIMIT, f"--as={memory}", f"--cpu={cpu}", "--", *argv]


def _run(argv: list[str], *, timeout: int = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout, check=False)  # noqa: S603
    except subprocess.TimeoutExpired as exc:
        raise QemuImgError(f"{argv[4] if len(argv) > 4 else argv[0]} timed out") from exc


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int
    actual_size: int
    backing_file: str | None
    data_file: str | None
    raw: dict
    encrypted: bool = False


def info(path: Path, *, fmt: str) -> ImageInfo:
    proc = _run(_limited([QEMU_IMG, "info", "-f", fmt, "--output=json", str(path)]))
    if proc.returncode != 0:
        raise _error(proc.stderr, path, fallback="qemu-img info failed")
    data = json.loads(proc.stdout)
    specific = (data.get("format-specific") or {}).get("data") or {}
    return ImageInfo(
        format=data.get("format", ""),
        virtual_size=int(data.get("virtual-size", 0)),
        actual_size=int(data.get("actual-size", 0)),
        backing_file=data.get("backing-filename") or data.get("full-backing-filename"),
        data_file=specific.get("data-file"),
        raw=data,
        encrypted=bool(data.get("encrypted")) or bool(specific.get("encrypt")),
    )


def measure(path: Path, *, fmt: str, target_fmt: str = "qcow2") -> int:
    """Bytes a conversion of ``path`` to ``target_fmt`` needs at most (``qemu-img measure``)."""
    proc = _run(_limited([QEMU_IMG, "measure", "-f", fmt, "-O", target_fmt, "--output=json", str(path)]))
    if proc.returncode != 0:
        raise _error(proc.stderr, path, fallback="qemu-img measure failed")
    return int(json.loads(proc.stdout)["required"])


def measure_alone(path: Path) -> int:
    """Bytes the current contents of a qcow2 volume need alone: its own clusters as a new qcow2 would hold them,
    without its internal snapshots and without its backing chain (``qemu-img measure``).

    What the file holds beyond that is what its snapshots keep: blocks the guest has rewritten since
    and saved memory. Read shared (``-U``): a running QEMU holds the volume; it flushes after a
    snapshot, in between the figure may lag by the guest's unflushed writes.
    """
    image = json.dumps({"driver": "qcow2", "file": {"driver": "file", "filename": str(path)}, "backing": None})
    proc = _run(_limited([QEMU_IMG, "measure", "-U", "--output=json", "-O", "qcow2", f"json:{image}"]))
    if proc.returncode != 0:
        raise _error(proc.stderr.decode(errors="replace").strip(), path, fallback="qemu-img measure failed")
    return int(json.loads(proc.stdout)["required"])


def set_backing(path: Path, *, backing: str, backing_fmt: str) -> None:
    """Point a qcow2 overlay at another file holding the same base (``qemu-img rebase -u``: the header only).

    For an overlay carried to another host, where the same base image lives at another path.
    """
    argv = [QEMU_IMG, "rebase", "-u", "-f", "qcow2", "-b", backing, "-F", backing_fmt, str(path)]
    proc = _run(_limited(argv))
    if proc.returncode != 0:
        raise _error(proc.stderr.decode(errors="replace").strip(), path, fallback="qemu-img rebase failed")


def check(path: Path, *, fmt: str) -> None:
    """Consistency check (qcow2, vdi, vhdx…): refuses truncated or corrupt images."""
    proc = _run(_limited([QEMU_IMG, "check", "-f", fmt, "--output=json", str(path)]), timeout=300)
    if proc.returncode in (0, 3):  # 3: only leaked clusters, wasted space but no corruption
        return
    try:
        data = json.loads(proc.stdout)
        detail = f"{data.get('corruptions', 0)} corruption(s), {data.get('check-errors', 0)} check error(s)"
    except ValueError:
        detail = proc.stderr.decode(errors="replace").strip()[:300]
    raise _error(detail, path, fallback="qemu-img check failed")


def convert(
    source: Path,
    target: Path,
    *,
    source_fmt: str,
    target_fmt: str = "qcow2",
    progress: Callable[[int], None] | None = None,
) -> None:
    """Convert (and so flatten) ``source`` into a standalone ``target`` image, reporting progress in %."""
    argv = _limited(
        [QEMU_IMG, "convert", "-p", "-f", source_fmt, "-O", target_fmt, str(source), str(target)], convert=True
    )
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
    try:
        buffer = b""
        last = -1
        while chunk := proc.stdout.read1(256):  # type: ignore[union-attr]
            buffer = (buffer + chunk)[-256:]
            found = _PROGRESS.findall(buffer)
            if found and progress is not None:
                percent = int(float(found[-1]))
                if percent != last:
                    last = percent
                    progress(percent)
        stderr = proc.stderr.read() if proc.stderr else b""
    except BaseException:
        # Interrupted (the task's time limit, a failing progress callback): qemu-img must not go on writing.
        proc.kill()
        proc.wait()
        target.unlink(missing_ok=True)
        raise
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if proc.wait() != 0:
        target.unlink(missing_ok=True)
        raise _error(stderr, source, target, fallback="qemu-img convert failed")
