"""`manage.py serve`: run every labcloud process in the foreground and keep them running.

Starts the web server (daphne), the Celery workers (one for instance operations, with beat,
one for image work: docs/architecture.md), the host watcher and the console proxy as child
processes, prefixes their output with the process name and prints the URL once the web server
accepts connections.

A child that exits on its own is logged with its name, pid and exit status and started
again after a delay, while the other children keep serving: the first restart waits
RESTART_DELAY_MIN, each further exit after a short run doubles the delay up to
RESTART_DELAY_MAX, and a child that stayed up STABLE_AFTER seconds starts over at the
minimum. A child crashing in a tight loop therefore costs a start every RESTART_DELAY_MAX
seconds, not a spinning CPU. Ctrl-C / SIGTERM / SIGHUP stop them all (SIGTERM to each,
SIGKILL after a grace period) and the command exits 0.

Each child runs in a process group of its own: when it dies, whatever it left behind in
its group (e.g. Celery's pool processes) is killed before it is started again, as
systemd does with a service's control group.

A new long-running process is one more ProcessSpec in `process_specs()`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from portal.celery import image_queue

STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
POLL_INTERVAL = 0.2  # seconds between checks of the children (and of the web port until it is up)
RESTART_DELAY_MIN = 1.0  # seconds before the first restart of a crashed child
RESTART_DELAY_MAX = 30.0  # the delay doubles after each quick crash, up to this
STABLE_AFTER = 30.0  # a child that ran this long is restarted after the minimum delay again
COLORS = ("36", "33", "35", "32", "34", "31")
WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - not a bind


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: list[str]


def process_specs(host: str, port: int) -> list[ProcessSpec]:
    """The processes `serve` runs, in start order (they are stopped in reverse)."""
    py = sys.executable
    default_queue = settings.CELERY_TASK_DEFAULT_QUEUE
    # Behind nginx the client's address comes from X-Forwarded-For (LABCLOUD_PROXY_HEADERS).
    proxy = ["--proxy-headers"] if settings.LABCLOUD_PROXY_HEADERS else []
    return [
        ProcessSpec("web", [py, "-m", "daphne", *proxy, "-b", host, "-p", str(port), "portal.asgi:application"]),
        # Two workers: instance operations and housekeeping on the default queue (with --beat: the periodic
        # housekeeping of CELERY_BEAT_SCHEDULE runs inside it), image work on the image queue, so a launch
        # or a power action never waits behind an import or a conversion.
        ProcessSpec("worker", celery_worker_argv(default_queue, settings.LABCLOUD_WORKER_CONCURRENCY, beat=True)),
        ProcessSpec(
            "images",
            celery_worker_argv(image_queue(), settings.LABCLOUD_IMAGE_WORKER_CONCURRENCY, name=f"{image_queue()}@%h"),
        ),
        ProcessSpec("watcher", [py, "manage.py", "watch_hosts"]),
        ProcessSpec("console", [py, "manage.py", "consoleproxy"]),
    ]


def celery_worker_argv(queue: str, concurrency: int, *, beat: bool = False, name: str = "") -> list[str]:
    """A Celery worker (prefork pool: it enforces the tasks' time limits) reading one queue."""
    argv = [sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", queue, *(["-n", name] if name else [])]
    return [*argv, *(["--beat"] if beat else []), "-l", "info", "--concurrency", str(concurrency)]


def exit_status(returncode: int) -> str:
    """A child's exit status in words: "code 3" or "signal SIGKILL"."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"code {returncode}"


class _Child:
    """One supervised process: its spec, the running Popen (None while it waits for a restart) and its backoff."""

    def __init__(self, spec: ProcessSpec, color: str) -> None:
        self.spec, self.color = spec, color
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.delay = 0.0  # the delay of the last restart (0: none yet, or reset after a stable run)
        self.restart_at: float | None = None
        self.restarts = 0
        self.readers: list[threading.Thread] = []


class Supervisor:
    """Runs ProcessSpecs as children, restarts the ones that exit (with backoff) until `request_stop()`.

    ``run()`` blocks; call ``request_stop()`` from a signal handler or another thread. Output
    lines go to ``out`` prefixed with the child's name; the supervisor's own lines are
    prefixed "serve". ``ready``/``ready_message``: checked every POLL_INTERVAL until it
    returns True, then the message is logged once.
    """

    def __init__(
        self,
        specs: list[ProcessSpec],
        *,
        out: TextIO,
        cwd: str | Path,
        env: Mapping[str, str],
        color: bool = False,
        restart_delay: float = RESTART_DELAY_MIN,
        max_restart_delay: float = RESTART_DELAY_MAX,
        stable_after: float = STABLE_AFTER,
        stop_timeout: float = STOP_TIMEOUT,
        ready: Callable[[], bool] | None = None,
        ready_message: str = "",
    ) -> None:
        self.children = [_Child(spec, COLORS[index % len(COLORS)]) for index, spec in enumerate(specs)]
        self.out, self.cwd, self.env, self.color = out, cwd, dict(env), color
        self.restart_delay, self.max_restart_delay = restart_delay, max_restart_delay
        self.stable_after, self.stop_timeout = stable_after, stop_timeout
        self.ready, self.ready_message = ready, ready_message
        self.width = max(len(name) for name in ["serve", *(spec.name for spec in specs)])
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_reason = ""

    # ------------------------------------------------------------------ control

    def request_stop(self, reason: str = "") -> None:
        """Stop every child and return from run(); safe in a signal handler (sets an event, nothing else)."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def pids(self) -> dict[str, int | None]:
        """The current pid of each child (None while it waits for its restart)."""
        return {child.spec.name: child.proc.pid if child.proc else None for child in self.children}

    def run(self) -> None:
        try:
            for child in self.children:
                if self._stop.is_set():
                    break
                self._start(child)
            announced = self.ready is None
            while not self._stop.is_set():
                now = time.monotonic()
                for child in self.children:
                    if child.proc is not None:
                        self._check_exit(child, now)
                    elif child.restart_at is not None and now >= child.restart_at:
                        child.restarts += 1
                        self._start(child, restart=True)
                if not announced and self.ready():
                    announced = True
                    self.log(self.ready_message)
                self._stop.wait(self._next_wakeup())
            if self._stop_reason:
                self.log(f"received {self._stop_reason}, stopping")
        finally:
            self._stop_all()
            for child in self.children:
                for reader in child.readers:
                    reader.join(timeout=2)

    # ------------------------------------------------------------------ children

    def _start(self, child: _Child, *, restart: bool = False) -> None:
        child.restart_at = None
        child.proc = subprocess.Popen(  # noqa: S603 - fixed argv from process_specs()
            child.spec.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Own process group: the terminal's Ctrl-C reaches only this command, which then
            # stops the children in order; and a dead child's leftovers can be killed as a group.
            process_group=0,
        )
        child.started_at = time.monotonic()
        if restart:
            self.log(f"restarted {child.spec.name} (pid {child.proc.pid}), restart {child.restarts}")
        else:
            self.log(f"started {child.spec.name} (pid {child.proc.pid}): {' '.join(child.spec.argv)}")
        child.readers = [t for t in child.readers if t.is_alive()]
        reader = threading.Thread(target=self._pump, args=(child, child.proc), daemon=True)
        reader.start()
        child.readers.append(reader)

    def _check_exit(self, child: _Child, now: float) -> None:
        """If the child has exited: kill its group's leftovers, reap it, log it and schedule its restart."""
        proc = child.proc
        # WNOWAIT: look without reaping, so the pid (and with it the process group id) cannot be
        # reused by another process before the group's leftovers are killed.
        try:
            state = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # already reaped (by Popen)
            state = True
        if not state:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
        child.proc = None
        ran = now - child.started_at
        if child.delay == 0 or ran >= self.stable_after:
            child.delay = self.restart_delay
        else:
            child.delay = min(self.max_restart_delay, child.delay * 2)
        child.restart_at = time.monotonic() + child.delay
        self.log(
            f"{child.spec.name} (pid {proc.pid}) exited with {exit_status(code)} after {ran:.1f} s; "
            f"restarting in {child.delay:g} s"
        )

    def _next_wakeup(self) -> float:
        now = time.monotonic()
        pending = [child.restart_at - now for child in self.children if child.restart_at is not None]
        return max(0.0, min([POLL_INTERVAL, *pending]))

    def _stop_all(self) -> None:
        running = [child for child in reversed(self.children) if child.proc is not None and child.proc.poll() is None]
        for child in running:
            self.log(f"stopping {child.spec.name} (pid {child.proc.pid})")
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in running:
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(f"{child.spec.name} did not stop within {self.stop_timeout:g} s, killing it")
                # The child is not reaped yet, so its pid still names its process group.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
        for child in self.children:
            if child.proc is not None:
                self.log(f"{child.spec.name} stopped ({exit_status(child.proc.returncode)})")
                child.proc = None
            child.restart_at = None

    # ------------------------------------------------------------------ output

    def _pump(self, child: _Child, proc: subprocess.Popen) -> None:
        """Copy a child's output line by line, prefixed with its name."""
        for raw in iter(proc.stdout.readline, b""):
            self._emit(child.spec.name, raw.decode("utf-8", "replace").rstrip("\r\n"), child.color)
        proc.stdout.close()

    def log(self, message: str) -> None:
        self._emit("serve", message, "1")

    def _emit(self, name: str, line: str, color: str) -> None:
        prefix = f"{name:<{self.width}} |"
        if self.color:
            prefix = f"\x1b[{color}m{prefix}\x1b[0m"
        with self._lock:
            self.out.write(f"{prefix} {line}\n")
            self.out.flush()


class Command(BaseCommand):
    help = "Run the labcloud processes in the foreground, restarting any that crash (Ctrl-C stops all)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--host",
            default=os.environ.get("LABCLOUD_HOST", "127.0.0.1"),
            help="address the web server binds (default: $LABCLOUD_HOST or 127.0.0.1)",
        )
        parser.add_argument(
            "--port",
            type=int,
            default=int(os.environ.get("LABCLOUD_PORT", "8000")),
            help="port of the web server (default: $LABCLOUD_PORT or 8000)",
        )

    def handle(self, *args, host, port, **options):
        if _accepts(host, port):
            raise CommandError(f"{host}:{port} is already in use (another labcloud running? try --port)")
        url_host = WILDCARD_HOSTS.get(host, host)
        if ":" in url_host:
            url_host = f"[{url_host}]"
        supervisor = Supervisor(
            process_specs(host, port),
            out=self.stdout,
            cwd=settings.BASE_DIR,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            color=self.stdout.isatty() and not os.environ.get("NO_COLOR"),
            ready=lambda: _accepts(host, port),
            ready_message=f"labcloud is up: http://{url_host}:{port}/  (Ctrl-C to stop)",
        )

        def on_signal(signum, frame):
            supervisor.request_stop(signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            supervisor.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _accepts(host: str, port: int) -> bool:
    """Does something accept TCP connections on host:port?"""
    try:
        with socket.create_connection((WILDCARD_HOSTS.get(host, host), port), timeout=0.5):
            return True
    except OSError:
        return False
