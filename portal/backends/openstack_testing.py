"""The devcloud: a minimal real OpenStack control plane for the tests (scripts/devcloud/).

``devcloud_fixture`` is a session fixture named ``devcloud``. A test module uses it with::

    from portal.backends.openstack_testing import devcloud_fixture  # noqa: F401

It runs ``scripts/devcloud/up.sh`` once per test run (a no-op when the devcloud is already up) and
yields a :class:`DevCloud`. At session end the devcloud is stopped (``down.sh``, by recorded PIDs)
only if a fixture started it and no other live test session still holds a lease on it; one started
by hand with ``up.sh`` is left running. ``LABCLOUD_DEVCLOUD=skip`` skips the tests that need it.

``scripts/test.sh`` starts the devcloud itself before its pytest passes (the fixture then reuses it) and
stops it afterwards if it started it. When that start failed, test.sh sets ``LABCLOUD_DEVCLOUD_UP_FAILED``
to the log of the failed ``up.sh``: the tests that need the devcloud then fail at once instead of trying
again. Test modules that use the fixture are marked ``openstack`` (``pytestmark = pytest.mark.openstack``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import pytest
import yaml

from portal.testing import other_live_leases, session_lock

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "devcloud"
STATE = Path(os.environ.get("DEVCLOUD_DIR") or ROOT / "var" / "devcloud")  # as in scripts/devcloud/lib.sh
RUN = STATE / "run"
STARTED_MARK = RUN / "started-by-fixture"
UP_TIMEOUT = 1800  # a cold start installs five venvs from PyPI


@dataclass(frozen=True)
class DevCloud:
    clouds_yaml: Path
    auth: dict[str, str]
    region_name: str

    def connect(self, **overrides: Any):
        """An openstacksdk connection as the devcloud admin (``overrides`` replace auth settings)."""
        return openstack.connect(load_yaml_config=False, region_name=self.region_name, **{**self.auth, **overrides})


def _started_by_harness(pid: int) -> bool:
    """The process runs inside var/devcloud, as everything up.sh starts does (so it is not a reused PID)."""
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return cwd == STATE or STATE in cwd.parents


def _run(script: str) -> None:
    log = STATE / "logs" / f"fixture-{script.removesuffix('.sh')}.out"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.run(  # noqa: S603 - our own script, fixed arguments
            [str(SCRIPTS / script)], stdout=out, stderr=subprocess.STDOUT, timeout=UP_TIMEOUT, check=False
        )
    if proc.returncode:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"scripts/devcloud/{script} failed (exit {proc.returncode}); {log}:\n{tail}")


def _already_up() -> bool:
    """Every recorded service PID runs (up.sh checks health in depth)."""
    pids = list(RUN.glob("*.pid"))
    return bool(pids) and all(_started_by_harness(int(p.read_text().strip() or 0)) for p in pids)


@pytest.fixture(scope="session", name="devcloud")
def devcloud_fixture() -> Iterator[DevCloud]:
    if os.environ.get("LABCLOUD_DEVCLOUD") == "skip":
        pytest.skip("LABCLOUD_DEVCLOUD=skip")
    if failed_log := os.environ.get("LABCLOUD_DEVCLOUD_UP_FAILED"):
        pytest.fail(
            f"devcloud did not start (scripts/devcloud/up.sh failed in scripts/test.sh): see {failed_log}",
            pytrace=False,
        )
    lease = RUN / f"lease-{os.getpid()}"
    with session_lock(RUN / "fixture.lock"):
        if not _already_up():
            STARTED_MARK.unlink(missing_ok=True)
            try:
                _run("up.sh")  # on failure up.sh itself stops what it started
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                pytest.fail(f"devcloud did not start: {exc}", pytrace=False)
            STARTED_MARK.touch()
        else:
            _run("up.sh")  # already up: only checks health (and restarts a half-dead devcloud)
        lease.touch()
    cloud = yaml.safe_load((STATE / "clouds.yaml").read_text())["clouds"]["devcloud-admin"]
    try:
        yield DevCloud(clouds_yaml=STATE / "clouds.yaml", auth=cloud["auth"], region_name=cloud["region_name"])
    finally:
        with session_lock(RUN / "fixture.lock"):
            lease.unlink(missing_ok=True)
            if STARTED_MARK.exists() and not other_live_leases(RUN):
                STARTED_MARK.unlink()
                _run("down.sh")
