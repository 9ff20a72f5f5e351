"""`manage.py serve` keeps the portal up when one of its processes dies.

The supervisor itself first (in this process, with short delays): a child that crashes at
once is restarted with a doubling delay up to the cap, so it cannot spin the CPU, while a
steady neighbour keeps its pid; a child that ran a while starts over at the minimum delay.

Then the real command: `manage.py serve` on a free 127.0.0.1 port with this test's SQLite
database, a Redis database of its own (queue and channel prefix of its own too) and a free
console proxy port. Each child is killed with SIGKILL in turn; the test waits for the
supervisor's restart line, the new pid and the child's own "ready" sign, while a thread asks
the web server for the login page the whole time. Only while the web child itself is being
restarted may a request fail, and it must answer again within WEB_BACK_WITHIN seconds.
Finally SIGTERM stops the supervisor and every child is gone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from functools import partial
from pathlib import Path

import pytest
import redis
from django.conf import settings

from portal.management.commands.serve import ProcessSpec, Supervisor, process_specs
from portal.testing import database_url_of_this_test, free_port

REDIS_DB = 11  # this test's own Redis database (broker and channel layer of the serve under test)
WEB_BACK_WITHIN = 20.0  # seconds: the web answers again this soon after its process was killed
START_TIMEOUT = 45.0  # seconds for all four processes to come up on a busy 2-core machine


class Lines:
    """A text stream that keeps its lines and lets a test wait for one (an event, not a sleep)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._buffer = ""
        self._cond = threading.Condition()

    def write(self, text: str) -> None:
        with self._cond:
            self._buffer += text
            *complete, self._buffer = self._buffer.split("\n")
            self.lines.extend(complete)
            self._cond.notify_all()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        with self._cond:
            if self._buffer:
                self.lines.append(self._buffer)
                self._buffer = ""
            self._cond.notify_all()

    def wait_for(self, pattern: str, *, start: int = 0, timeout: float) -> tuple[re.Match, int]:
        """The first line from index ``start`` on that matches ``pattern``, and the index after it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = start
            while True:
                for position in range(seen, len(self.lines)):
                    match = regex.search(self.lines[position])
                    if match:
                        return match, position + 1
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = "\n".join(self.lines[-40:])
                    pytest.fail(f"no line matching {pattern!r} within {timeout} s; last lines:\n{tail}")
                self._cond.wait(remaining)

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self.lines if regex.search(line))


# ---------------------------------------------------------------- the supervisor alone


def run_supervisor(supervisor: Supervisor) -> threading.Thread:
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()
    return thread


def test_crash_loop_backs_off_and_spares_the_others():
    out = Lines()
    crasher = ProcessSpec("crasher", [sys.executable, "-c", "print('crasher up', flush=True); raise SystemExit(3)"])
    steady = ProcessSpec(
        "steady", [sys.executable, "-c", "import time; print('steady up', flush=True); time.sleep(600)"]
    )
    supervisor = Supervisor(
        [steady, crasher],
        out=out,
        cwd=settings.BASE_DIR,
        env=os.environ,
        restart_delay=0.1,
        max_restart_delay=0.4,
        stable_after=30,
        stop_timeout=5,
    )
    cpu_before, wall_before = time.process_time(), time.monotonic()
    thread = run_supervisor(supervisor)
    try:
        steady_pid = int(out.wait_for(r"started steady \(pid (\d+)\)", timeout=10)[0].group(1))
        # Six exits: the delays double from 0.1 s and stop at the 0.4 s cap.
        index = 0
        delays = []
        for _ in range(6):
            match, index = out.wait_for(
                r"crasher \(pid \d+\) exited with code 3 after [\d.]+ s; restarting in ([\d.]+) s",
                start=index,
                timeout=10,
            )
            delays.append(float(match.group(1)))
        assert delays == [0.1, 0.2, 0.4, 0.4, 0.4, 0.4]
        wall = time.monotonic() - wall_before
        cpu = time.process_time() - cpu_before
        # Waiting out the delays costs (next to) no CPU in the supervisor: far from a busy loop.
        assert cpu < 0.5 * wall, f"supervisor used {cpu:.2f} s of CPU in {wall:.2f} s"
        # 6 exits need at least 0.1 + 0.2 + 0.4 * 3 s of delays before the 6th restart.
        assert wall >= 1.5
        assert supervisor.pids()["steady"] == steady_pid
        assert out.count(r"restarted steady") == 0
    finally:
        supervisor.request_stop("test end")
        thread.join(15)
    assert not thread.is_alive()
    assert supervisor.pids() == {"steady": None, "crasher": None}
    assert out.count(r"steady stopped \(signal SIGTERM\)") == 1
    with pytest.raises(ProcessLookupError):
        os.kill(steady_pid, 0)


def test_a_child_that_ran_a_while_restarts_after_the_minimum_delay():
    out = Lines()
    # Runs 0.5 s (longer than stable_after) and exits: every restart waits the minimum again.
    brief = ProcessSpec("brief", [sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(1)"])
    supervisor = Supervisor(
        [brief],
        out=out,
        cwd=settings.BASE_DIR,
        env=os.environ,
        restart_delay=0.1,
        max_restart_delay=5,
        stable_after=0.3,
    )
    thread = run_supervisor(supervisor)
    try:
        index = 0
        for _ in range(3):
            match, index = out.wait_for(
                r"brief .* exited with code 1 .*restarting in ([\d.]+) s", start=index, timeout=15
            )
            assert float(match.group(1)) == 0.1
    finally:
        supervisor.request_stop()
        thread.join(15)
    assert not thread.is_alive()


def test_leftovers_of_a_dead_child_are_killed_before_its_restart(tmp_path):
    """A child's own children (Celery's pool processes, say) die with it, as in a systemd control group."""
    out = Lines()
    pidfile = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time, pathlib\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"pathlib.Path({str(pidfile)!r}).write_text(str(p.pid))\n"
        "print('parent up', flush=True)\n"
        "time.sleep(600)\n"
    )
    supervisor = Supervisor(
        [ProcessSpec("parent", [sys.executable, "-c", script])],
        out=out,
        cwd=settings.BASE_DIR,
        env=os.environ,
        restart_delay=30,
    )
    thread = run_supervisor(supervisor)
    try:
        match, index = out.wait_for(r"started parent \(pid (\d+)\)", timeout=10)
        out.wait_for(r"^parent +\| parent up", start=index, timeout=10)
        grandchild = int(pidfile.read_text())
        os.kill(int(match.group(1)), signal.SIGKILL)
        out.wait_for(r"parent \(pid \d+\) exited with signal SIGKILL", start=index, timeout=10)
        # The grandchild was re-parented (to init or a subreaper), so it is not ours to wait for: poll /proc.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{grandchild}").exists() and "Z" not in _proc_state(grandchild):
            assert time.monotonic() < deadline, "the dead child's own child survived it"
            time.sleep(0.02)
    finally:
        supervisor.request_stop()
        thread.join(15)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


def test_web_trusts_forwarded_addresses_only_when_told(settings):
    """Behind nginx (LABCLOUD_PROXY_HEADERS=true) daphne takes the client address from X-Forwarded-For."""
    web = next(spec for spec in process_specs("127.0.0.1", 8000) if spec.name == "web")
    assert "--proxy-headers" not in web.argv
    settings.LABCLOUD_PROXY_HEADERS = True
    web = next(spec for spec in process_specs("127.0.0.1", 8000) if spec.name == "web")
    assert "--proxy-headers" in web.argv


# ---------------------------------------------------------------- manage.py serve for real


class WebProbe(threading.Thread):
    """Asks the web server for the login page every 50 ms and records (sent, done, ok) for every request.

    A request sent just before the web is killed fails after the kill: which window a failure belongs
    to is decided by both times, never by which of the two (the probe or the kill) came first."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.results: list[tuple[float, float, bool]] = []
        self.errors: list[tuple[float, str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            at = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:  # noqa: S310 - http://127.0.0.1
                    ok = response.status == 200
            except OSError as exc:
                ok = False
                self.errors.append((at, repr(exc)))
            self.results.append((at, time.monotonic(), ok))
            self.stopping.wait(0.05)

    def failures_between(self, start: float, end: float) -> int:
        """Failed requests sent at ``start`` or later and over by ``end``."""
        return sum(1 for sent, done, ok in self.results if start <= sent and done <= end and not ok)

    def answered_since(self, since: float) -> bool:
        return any(ok for sent, _done, ok in self.results[-5:] if sent >= since)


@pytest.fixture
def serve_env(transactional_db, tmp_path):
    base = settings.REDIS_URL.rsplit("/", 1)[0]
    redis_url = f"{base}/{REDIS_DB}"
    tag = f"lctest-serve-{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of_this_test(),
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_QUEUE": tag,
        "CHANNEL_LAYER_PREFIX": tag,
        "LABCLOUD_VAR_DIR": str(tmp_path / "var"),  # beat's schedule file, the generated secret key
        "ALLOWED_HOSTS": "127.0.0.1",
        "CONSOLE_PROXY_HOST": "127.0.0.1",
        "CONSOLE_PROXY_PORT": str(free_port()),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "NO_COLOR": "1",
    }
    yield env
    client = redis.Redis.from_url(redis_url)
    keys = client.keys(f"*{tag}*")
    if keys:
        client.delete(*keys)


# What each child prints once it serves again (the web is checked over HTTP instead).
READY = {
    "worker": r"^worker +\| .*celery@\S+ ready\.",
    "images": r"^images +\| .*\.images@\S+ ready\.",
    "watcher": r"^watcher +\| .*watcher running",
    "console": r"^console +\| console proxy listening on",
}


def test_serve_restarts_each_killed_child_and_keeps_the_web_up(serve_env):
    port = free_port()
    url = f"http://127.0.0.1:{port}/login/"
    out = Lines()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=settings.BASE_DIR,
        env=serve_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def pump():
        for line in proc.stdout:
            out.write(line)
        out.close()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    probe = WebProbe(url)
    pids: dict[str, int] = {}
    timings: dict[str, float] = {}
    try:
        for name in ("web", "worker", "images", "watcher", "console"):
            pids[name] = int(out.wait_for(rf"started {name} \(pid (\d+)\)", timeout=30)[0].group(1))
        out.wait_for(r"labcloud is up: http://127\.0\.0\.1:", timeout=START_TIMEOUT)
        for pattern in READY.values():
            out.wait_for(pattern, timeout=START_TIMEOUT)
        probe.start()
        _wait(lambda: probe.answered_since(0), timeout=10, what="the first answer of the probe")

        web_outage = (0.0, 0.0)
        kills: dict[str, float] = {}
        for name in ("watcher", "console", "worker", "images", "web"):
            mark = len(out.lines)
            killed_at = time.monotonic()
            kills[name] = killed_at
            os.kill(pids[name], signal.SIGKILL)
            out.wait_for(
                rf"{name} \(pid {pids[name]}\) exited with signal SIGKILL after [\d.]+ s; restarting in 1 s",
                start=mark,
                timeout=10,
            )
            match, after = out.wait_for(rf"restarted {name} \(pid (\d+)\)", start=mark, timeout=10)
            new_pid = int(match.group(1))
            assert new_pid != pids[name]
            if name == "web":
                _wait(partial(probe.answered_since, killed_at), timeout=WEB_BACK_WITHIN, what="the web's answer")
                web_outage = (killed_at, time.monotonic())
            else:
                out.wait_for(READY[name], start=after, timeout=30)
            timings[name] = time.monotonic() - killed_at
            pids[name] = new_pid

        probe.stopping.set()
        probe.join(5)
        # No request failed while the other children were down; the web's own gap is bounded (above).
        first_answer = next(sent for sent, _done, ok in probe.results if ok)
        assert probe.failures_between(first_answer, web_outage[0]) == 0, (probe.errors, kills)
        assert probe.failures_between(web_outage[1], float("inf")) == 0
        gap = [sent for sent, _done, ok in probe.results if not ok]
        print(
            "restart latency (kill → serving again): "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
            + f"; web failed requests: {len(gap)}"
            + (f" over {gap[-1] - gap[0]:.1f} s" if gap else "")
        )
        # Every other child kept its pid through the others' restarts.
        current = {name: int(m) for name, m in re.findall(r"(?:started|restarted) (\w+) \(pid (\d+)\)", _text(out))}
        assert current == pids

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        reader.join(10)
        assert out.count(r"received SIGTERM, stopping") == 1
        for name, pid in pids.items():
            assert out.count(rf"{name} stopped") >= 1
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        probe.stopping.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for pid in pids.values():  # children of the serve under test, should it have died without stopping them
            if Path(f"/proc/{pid}").exists() and _proc_state(pid) != "Z":
                os.kill(pid, signal.SIGKILL)


def _text(out: Lines) -> str:
    return "\n".join(out.lines)


def _wait(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
