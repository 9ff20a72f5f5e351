"""`manage.py serve`: run every labcloud process in the foreground.

Starts the web server (daphne) and the celery worker as child processes, prefixes
their output with the process name, prints the URL once the web server accepts
connections, and stops them all on Ctrl-C / SIGTERM (SIGTERM to each, SIGKILL
after a grace period). If any child exits on its own, the others are stopped and
the command exits non-zero.

A new long-running process is one more ProcessSpec in `process_specs()`.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
POLL_INTERVAL = 0.2
COLORS = ("36", "33", "35", "32", "34", "31")
WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - not a bind


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: list[str]


def process_specs(host: str, port: int) -> list[ProcessSpec]:
    """The processes `serve` runs, in start order (they are stopped in reverse)."""
    py = sys.executable
    return [
        ProcessSpec("web", [py, "-m", "daphne", "-b", host, "-p", str(port), "portal.asgi:application"]),
        # --beat: the periodic housekeeping of CELERY_BEAT_SCHEDULE runs inside the worker (one machine).
        ProcessSpec(
            "worker", [py, "-m", "celery", "-A", "portal", "worker", "--beat", "-l", "info", "--concurrency", "2"]
        ),
        ProcessSpec("watcher", [py, "manage.py", "watch_hosts"]),
        ProcessSpec("console", [py, "manage.py", "consoleproxy"]),
    ]


class Command(BaseCommand):
    help = "Run the labcloud web server and worker in the foreground (Ctrl-C stops all)."

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
        specs = process_specs(host, port)
        self._lock = threading.Lock()
        self._color = self.stdout.isatty() and not os.environ.get("NO_COLOR")
        self._width = max(len(name) for name in ["serve", *(spec.name for spec in specs)])
        self._signals: list[int] = []
        procs: list[tuple[ProcessSpec, subprocess.Popen]] = []
        readers: list[threading.Thread] = []
        exit_code = 0

        def on_signal(signum, frame):
            self._signals.append(signum)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            for index, spec in enumerate(specs):
                if self._signals:
                    break
                proc = subprocess.Popen(  # noqa: S603 - fixed argv from process_specs()
                    spec.argv,
                    cwd=settings.BASE_DIR,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    # Own process group: the terminal's Ctrl-C reaches only this
                    # command, which then stops the children in order.
                    process_group=0,
                )
                procs.append((spec, proc))
                self._log(f"started {spec.name} (pid {proc.pid}): {' '.join(spec.argv)}")
                reader = threading.Thread(target=self._pump, args=(spec.name, index, proc), daemon=True)
                reader.start()
                readers.append(reader)
            if not self._signals:
                exit_code = self._supervise(procs, host, port)
            if self._signals:
                self._log(f"received {signal.Signals(self._signals[0]).name}, stopping")
            self._stop_all(procs)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        for reader in readers:
            reader.join(timeout=2)
        if exit_code:
            raise SystemExit(exit_code)

    def _supervise(self, procs, host, port) -> int:
        """Wait until a signal arrives (returns 0) or a child exits (returns non-zero)."""
        announced = False
        while not self._signals:
            for spec, proc in procs:
                code = proc.poll()
                if code is not None:
                    self._log(f"{spec.name} exited with code {code}, stopping the others")
                    return 128 - code if code < 0 else code or 1  # killed by signal N: 128 + N
            if not announced and _accepts(host, port):
                announced = True
                url_host = WILDCARD_HOSTS.get(host, host)
                if ":" in url_host:
                    url_host = f"[{url_host}]"
                self._log(f"labcloud is up: http://{url_host}:{port}/  (Ctrl-C to stop)")
            time.sleep(POLL_INTERVAL)
        return 0

    def _stop_all(self, procs):
        running = [(spec, proc) for spec, proc in reversed(procs) if proc.poll() is None]
        for spec, proc in running:
            self._log(f"stopping {spec.name} (pid {proc.pid})")
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for spec, proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._log(f"{spec.name} did not stop within {STOP_TIMEOUT:.0f} s, killing it")
                # The child is not reaped yet, so its pid still names our process group.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for spec, proc in procs:
            self._log(f"{spec.name} stopped (code {proc.returncode})")

    def _pump(self, name, index, proc):
        """Copy a child's output line by line, prefixed with its name."""
        for raw in iter(proc.stdout.readline, b""):
            self._emit(name, raw.decode("utf-8", "replace").rstrip("\r\n"), COLORS[index % len(COLORS)])
        proc.stdout.close()

    def _log(self, message):
        self._emit("serve", message, "1")

    def _emit(self, name, line, color):
        prefix = f"{name:<{self._width}} |"
        if self._color:
            prefix = f"\x1b[{color}m{prefix}\x1b[0m"
        with self._lock:
            self.stdout.write(f"{prefix} {line}")
            self.stdout.flush()


def _accepts(host: str, port: int) -> bool:
    """Does something accept TCP connections on host:port?"""
    try:
        with socket.create_connection((WILDCARD_HOSTS.get(host, host), port), timeout=0.5):
            return True
    except OSError:
        return False
