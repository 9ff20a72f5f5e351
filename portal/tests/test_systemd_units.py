"""The production systemd units in deploy/systemd/ are valid and each one's ExecStart really starts its process.

This machine runs no systemd (PID 1 is something else), so nothing is installed or started
through systemctl. Instead:

- ``systemd-analyze verify`` (Debian's systemd package; ``bootstrap.sh --test`` installs it
  without starting anything) checks every unit with the install path /srv/labcloud pointed
  at this checkout, so the ExecStart programs exist; any warning fails the test;
- a strict parse (configparser: no duplicate sections or keys, known keys only) checks the
  policy: dedicated user, the settings file, Restart=on-failure with a short RestartSec, a
  unit for every process ``manage.py serve`` runs;
- each unit's ExecStart is run as systemd would run it: the unit's working directory, an
  environment made of systemd's basic variables, the unit's Environment= and then the
  settings file (here a temporary one naming this test's database, Redis database and free
  ports), with ``${VAR}``/``$VAR`` expanded as systemd does. The test waits for the process
  to serve (the web answers HTTP on 127.0.0.1, the worker logs "ready", beat starts, the
  watcher runs, the console proxy listens) and stops it by PID with SIGTERM, as systemd would.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings

from portal.management.commands.serve import process_specs
from portal.testing import database_url_of_this_test, free_port
from portal.tests.test_serve import Lines

UNITS_DIR = Path(settings.BASE_DIR) / "deploy" / "systemd"
INSTALL_DIR = "/srv/labcloud"
ENV_FILE = "/etc/labcloud/labcloud.env"
SERVICES = ("web", "worker", "image-worker", "beat", "watcher", "consoleproxy")
# The ProcessSpec of `manage.py serve` that each unit replaces (serve runs beat inside its worker).
SERVE_NAMES = {
    "web": "web",
    "worker": "worker",
    "images": "image-worker",
    "watcher": "watcher",
    "console": "consoleproxy",
}
# What systemd passes to every service before Environment= and EnvironmentFile= (systemd.exec(5)).
SYSTEMD_BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", "LANG": "C.UTF-8"}
KNOWN_KEYS = {
    "Unit": {
        "Description",
        "After",
        "Wants",
        "Requires",
        "PartOf",
        "StartLimitIntervalSec",
        "StartLimitBurst",
    },
    "Service": {
        "Type",
        "User",
        "Group",
        "SupplementaryGroups",
        "WorkingDirectory",
        "Environment",
        "EnvironmentFile",
        "ExecStart",
        "Restart",
        "RestartSec",
        "TimeoutStopSec",
        "NoNewPrivileges",
        "PrivateTmp",
        "ProtectSystem",
        "UMask",
    },
    "Install": {"WantedBy"},
}
REDIS_DB = 11  # the Redis database of the serve test: this test cleans up its own keys by prefix


def unit_path(name: str) -> Path:
    return UNITS_DIR / f"labcloud-{name}.service"


def parse_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text(), source=str(path))
    return parser


def test_every_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze missing: `make test` installs Debian's systemd package (scripts/bootstrap.sh)")
    units = sorted(UNITS_DIR.iterdir())
    assert {p.name for p in units} == {f"labcloud-{name}.service" for name in SERVICES} | {"labcloud.target"}
    for unit in units:  # the same units, installed in this checkout instead of /srv/labcloud
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALL_DIR, str(settings.BASE_DIR)))
    result = subprocess.run(
        [analyze, "verify", *(str(tmp_path / unit.name) for unit in units)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


def test_units_run_every_process_as_a_dedicated_user_and_restart_on_failure():
    serve_specs = {spec.name for spec in process_specs("127.0.0.1", 8000)}
    assert set(SERVE_NAMES) == serve_specs, "a process of manage.py serve has no systemd unit"
    for name in SERVICES:
        unit = parse_unit(unit_path(name))
        assert unit.sections() == ["Unit", "Service", "Install"]
        for section in unit.sections():
            unknown = set(unit[section]) - KNOWN_KEYS[section]
            assert not unknown, f"{name}: unexpected keys in [{section}]: {unknown}"
        service = unit["Service"]
        assert service["Type"] == "simple"
        assert service["User"] == service["Group"] == "labcloud"
        assert service["WorkingDirectory"] == INSTALL_DIR
        assert service["EnvironmentFile"] == ENV_FILE
        assert service["Restart"] == "on-failure"
        assert 1 <= int(service["RestartSec"]) <= 10
        assert int(service["TimeoutStopSec"]) <= 60
        argv = shlex.split(service["ExecStart"])
        assert argv[0] == f"{INSTALL_DIR}/.venv/bin/python"
        assert "%" not in service["ExecStart"], "systemd would expand % specifiers"
        assert unit["Unit"]["PartOf"] == "labcloud.target"
        assert unit["Install"]["WantedBy"] == "labcloud.target"
        assert int(unit["Unit"]["StartLimitBurst"]) >= 5
    target = parse_unit(UNITS_DIR / "labcloud.target")
    assert target["Install"]["WantedBy"] == "multi-user.target"


# ---------------------------------------------------------------- each ExecStart, started for real


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments, blank lines, surrounding quotes)."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def expand_exec_start(command: str, env: dict[str, str]) -> list[str]:
    """systemd's ExecStart= expansion: ``${VAR}`` stays one word, a word that is just ``$VAR`` splits on spaces."""
    argv: list[str] = []
    for word in shlex.split(command):
        bare = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if bare:
            argv.extend(env.get(bare.group(1), "").split())
            continue
        argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return argv


def unit_command(name: str, env_file: Path) -> tuple[list[str], dict[str, str], Path]:
    """argv, environment and working directory of the unit ``name`` as systemd would start it here."""
    service = parse_unit(unit_path(name))["Service"]
    env = dict(SYSTEMD_BASE_ENV)
    # With User=, systemd also sets the user's HOME, USER, LOGNAME and SHELL.
    home = env_file.parent / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), USER=service["User"], LOGNAME=service["User"], SHELL="/usr/sbin/nologin")
    env.update(read_env_file_line(service["Environment"]))
    assert service["EnvironmentFile"] == ENV_FILE
    env.update(read_env_file(env_file))  # EnvironmentFile= overrides Environment=
    command = service["ExecStart"].replace(INSTALL_DIR, str(settings.BASE_DIR))
    cwd = Path(service["WorkingDirectory"].replace(INSTALL_DIR, str(settings.BASE_DIR)))
    return expand_exec_start(command, env), env, cwd


def read_env_file_line(value: str) -> dict[str, str]:
    """Environment= assignments: space-separated KEY=VALUE words (quotes as in a shell)."""
    return dict(word.split("=", 1) for word in shlex.split(value))


@pytest.fixture
def settings_file(transactional_db, tmp_path):
    """The settings file of the units (/etc/labcloud/labcloud.env in production), for this test."""
    base = settings.REDIS_URL.rsplit("/", 1)[0]
    redis_url = f"{base}/{REDIS_DB}"
    tag = f"lctest-units-{uuid.uuid4().hex[:10]}"
    ports = {"LABCLOUD_PORT": free_port(), "CONSOLE_PROXY_PORT": free_port()}
    lines = [
        "# labcloud settings (test)",
        f"DATABASE_URL={database_url_of_this_test()}",
        f'REDIS_URL="{redis_url}"',
        f"CELERY_QUEUE={tag}",
        f"CHANNEL_LAYER_PREFIX={tag}",
        f"LABCLOUD_VAR_DIR={tmp_path / 'var'}",
        "ALLOWED_HOSTS=127.0.0.1",
        f"LABCLOUD_PORT={ports['LABCLOUD_PORT']}",
        "CONSOLE_PROXY_HOST=127.0.0.1",
        f"CONSOLE_PROXY_PORT={ports['CONSOLE_PROXY_PORT']}",
    ]
    path = tmp_path / "labcloud.env"
    path.write_text("\n".join(lines) + "\n")
    yield path
    client = redis.Redis.from_url(redis_url)
    keys = client.keys(f"*{tag}*")
    if keys:
        client.delete(*keys)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - http://127.0.0.1
            return response.status == 200
    except OSError:
        return False


def _listens(port: int) -> bool:
    """Is a socket listening on 127.0.0.1:port? Read from /proc/net/tcp, without connecting: a connection to
    the console proxy forks a handler, and websockify can hang when SIGTERM arrives during that fork."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if local == f"0100007F:{port:04X}" and state == "0A":
            return True
    return False


READY_LINE = {
    "worker": r"celery@\S+ ready\.",
    "image-worker": r"celery@\S+ ready\.",
    "beat": r"beat: Starting\.\.\.",
    "watcher": r"watcher running",
    "consoleproxy": r"console proxy listening on 127\.0\.0\.1:\d+",
}


@pytest.mark.parametrize("name", SERVICES)
def test_exec_start_starts_the_process(name, settings_file):
    argv, env, cwd = unit_command(name, settings_file)
    assert argv[0] == str(Path(settings.BASE_DIR) / ".venv" / "bin" / "python")
    out = Lines()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def pump():
        for line in proc.stdout:
            out.write(line)
        out.close()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        if name == "web":
            assert argv[argv.index("-b") + 1] == "127.0.0.1"
            url = f"http://127.0.0.1:{env['LABCLOUD_PORT']}/login/"
            deadline = time.monotonic() + 30
            while not _http_ok(url):
                assert proc.poll() is None, "\n".join(out.lines[-30:])
                assert time.monotonic() < deadline, "the web unit's daphne did not answer within 30 s"
                time.sleep(0.1)
        else:
            out.wait_for(READY_LINE[name], timeout=30)
            if name == "image-worker":  # it reads the image queue of the settings file's CELERY_QUEUE
                out.wait_for(r"\.> lctest-units-\w+\.images ", timeout=1)
            if name == "consoleproxy":
                # The command prints its line just before websockify binds: wait for the listening socket.
                deadline = time.monotonic() + 30
                while not _listens(int(env["CONSOLE_PROXY_PORT"])):
                    assert proc.poll() is None, "\n".join(out.lines[-30:])
                    assert time.monotonic() < deadline, "the console proxy did not listen within 30 s"
                    time.sleep(0.02)
            if name == "beat":
                # Beat logs "Starting" before it opens its schedule file; a SIGTERM in between breaks the
                # import of the dbm module it is loading (exit 1). Started means: the schedule file exists.
                var = Path(env["LABCLOUD_VAR_DIR"])
                deadline = time.monotonic() + 30
                while not list(var.glob("celerybeat-schedule*")):
                    assert proc.poll() is None, "\n".join(out.lines[-30:])
                    assert time.monotonic() < deadline, "beat did not open its schedule file within 30 s"
                    time.sleep(0.05)
        assert proc.poll() is None
        # Stop it as systemd does: SIGTERM to the main PID, SIGKILL after TimeoutStopSec.
        stop_timeout = int(parse_unit(unit_path(name))["Service"]["TimeoutStopSec"])
        os.kill(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not stop within {stop_timeout} s of SIGTERM:\n" + "\n".join(out.lines[-30:]))
        # A clean stop for systemd: exit 0, or the SIGTERM itself (so Restart=on-failure does not restart it).
        assert code in (0, -signal.SIGTERM), f"{name} stopped with {code}:\n" + "\n".join(out.lines[-30:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(5)
