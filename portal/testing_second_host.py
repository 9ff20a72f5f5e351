"""The tests' second libvirt host (scripts/second_host/): a pytest plugin, registered in the root conftest.py.

``second_host`` (session fixture) runs ``scripts/second_host/up.sh`` once per test run — a no-op when
the second host is already up — and yields a :class:`SecondHost`. At session end it runs ``down.sh``
only if a fixture started it and no other live test session holds a lease on it; one started by
hand is left running (the devcloud's fixture does the same, portal/backends/openstack_testing.py).

``second_host_row`` (function fixture) registers it as an ordinary portal ``Host`` row of kind
libvirt. Its URI is the **ssh** one (a test may switch it to the **tls** one, ``pkipath=`` naming the
client certificate up.sh made): the portal's URI validator accepts ``qemu:///system``,
``qemu+ssh://`` and ``qemu+tls://`` only, so an unauthenticated ``qemu+tcp://`` row could exist
only by going around ``full_clean()``; the row here passes it. Domains and volumes the portal makes
there are named with the test's own ``lctest-…`` prefix and removed afterwards.

Tests using them are marked ``second_host`` (registered here) and, as they run real guests and do
not depend on the database, ``libvirt_guests`` (the PostgreSQL pass of scripts/test.sh skips them).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from portal.backends.libvirt.connection import forget
from portal.backends.libvirt.driver import LibvirtDriver
from portal.testing import other_live_leases, session_lock, undefine_nwfilters
from vms.models import Host

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "second_host"
STATE = Path(os.environ.get("LABCLOUD_SECOND_HOST_DIR") or ROOT / "var" / "second-host")  # as scripts/second_host
FIXTURE = STATE / "fixture"  # lock, leases and the "a fixture started it" mark (down.sh keeps them)
STARTED_MARK = FIXTURE / "started-by-fixture"
SCRIPT_TIMEOUT = 300


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "second_host: uses the second libvirt host (scripts/second_host/), started once per run"
    )


@dataclass(frozen=True)
class SecondHost:
    """Where the second libvirt host answers (both URIs reach the same libvirtd) and what it has."""

    tcp_uri: str  # qemu+tcp://127.0.0.1:16510/system (no authentication; loopback, tests only)
    ssh_uri: str  # qemu+ssh://root@lctest-host2/system (its sshd on 127.0.0.1:10022, ssh_config alias)
    tls_uri: str  # qemu+tls://127.0.0.1:16511/system?pkipath=… (its own CA; the client certificate authenticates)
    pool: str  # its dir pool (it also has "default")
    host_uuid: str
    hostname: str
    directory: Path  # var/second-host

    @property
    def pid(self) -> int:
        """Its libvirtd's PID (read from the PID file: a restart by a test changes it)."""
        return int((self.directory / "run" / "libvirtd.pid").read_text().strip())

    @property
    def pool_path(self) -> Path:
        return self.directory / "pool"

    @property
    def pki(self) -> Path:
        """Its TLS files: the CA (cacert.pem, cakey.pem), the server's, and client/ (the portal side's)."""
        return self.directory / "pki"


def run_script(name: str, *args: str) -> str:
    """Run scripts/second_host/NAME; its output, or RuntimeError with the output when it fails."""
    proc = subprocess.run(  # noqa: S603 - our own script, fixed arguments
        ["/bin/bash", str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode and not (name == "status.sh" and proc.returncode in (1, 2)):
        raise RuntimeError(f"scripts/second_host/{name} failed (exit {proc.returncode}):\n{output[-4000:]}")
    return output


def status() -> str:
    """The state scripts/second_host/status.sh prints: "up", "down" or "partial"."""
    return run_script("status.sh").strip()


def read_info(directory: Path = STATE) -> SecondHost:
    """The running second host as up.sh described it (run/info)."""
    values = dict(line.split("=", 1) for line in (directory / "run" / "info").read_text().splitlines() if "=" in line)
    return SecondHost(
        tcp_uri=values["tcp_uri"],
        ssh_uri=values["ssh_uri"],
        tls_uri=values["tls_uri"],
        pool=values["pool"],
        host_uuid=values["host_uuid"],
        hostname=values["hostname"],
        directory=Path(values["dir"]),
    )


@pytest.fixture(scope="session")
def second_host() -> Iterator[SecondHost]:
    lease = FIXTURE / f"lease-{os.getpid()}"
    with session_lock(FIXTURE / "lock"):
        was_down = status() != "up"
        if was_down:
            STARTED_MARK.unlink(missing_ok=True)
        try:
            run_script("up.sh")  # already up: only checks that it answers (and its pools)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"the second libvirt host did not start: {exc}", pytrace=False)
        if was_down:
            STARTED_MARK.touch()
        lease.touch()
    try:
        yield read_info()
    finally:
        with session_lock(FIXTURE / "lock"):
            lease.unlink(missing_ok=True)
            if STARTED_MARK.exists() and not other_live_leases(FIXTURE):
                STARTED_MARK.unlink()
                run_script("down.sh")


@pytest.fixture
def second_host_row(second_host, db, settings):
    """A ``Host`` row for the second host (ssh URI, its pool, TCG, capacity filled in), validated by ``full_clean()``.

    ``LABCLOUD_DOMAIN_PREFIX`` becomes the test's own ``lctest-…-`` prefix; afterwards every domain and
    volume of the second host with that prefix is removed, also when the test failed.
    """
    prefix = f"lctest-{secrets.token_hex(3)}-"
    settings.LABCLOUD_DOMAIN_PREFIX = prefix
    capacity = LibvirtDriver(second_host.ssh_uri).capacity(second_host.pool)
    host = Host(
        name=f"{prefix}host2",
        kind=Host.Kind.LIBVIRT,
        uri=second_host.ssh_uri,
        storage_pool=second_host.pool,
        vnc_listen="127.0.0.1",
        virt_type=Host.VirtType.QEMU,
        state=Host.State.UP,
        cpus=capacity.cpus,
        memory_mib=capacity.memory_mib,
        free_memory_mib=capacity.free_memory_mib,
        pool_capacity=capacity.pool_capacity,
        pool_available=capacity.pool_available,
        backend_version=capacity.libvirt_version,
    )
    host.full_clean()
    host.save()
    try:
        yield host
    finally:
        remove_named(second_host.tcp_uri, prefix)


# ---------------------------------------------------------------- its libvirtd crashing (fault tests)

DAEMON_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/root"]


def _ours(host: SecondHost, pid: int, name: str) -> bool:
    """``pid`` is alive, is ``name`` and runs in the second host's namespace (as lib.sh's ``ours``): never the
    system's daemon, whatever a PID file says."""
    try:
        namespace = (host.directory / "run" / "mntns").read_text().strip()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        return comm == name and bool(namespace) and os.readlink(f"/proc/{pid}/ns/mnt") == namespace
    except OSError:
        return False


def kill_libvirtd(host: SecondHost, timeout: float = 15) -> int:
    """SIGKILL the second host's libvirtd (its recorded PID), as a crash does; its guests (QEMU) keep running.

    Returns the PID it killed, once that process is gone."""
    pid = host.pid
    if not _ours(host, pid, "libvirtd"):
        raise RuntimeError(f"pid {pid} is not the second host's libvirtd")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _ours(host, pid, "libvirtd"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"libvirtd {pid} did not die within {timeout} s")
        time.sleep(0.02)
    return pid


def start_libvirtd(host: SecondHost, timeout: float = 60) -> int:
    """Start the second host's libvirtd again (after ``kill_libvirtd``), inside its namespace, which its virtlogd
    and sshd keep alive; it finds its running guests again. Returns its PID once it answers over tcp."""
    import libvirt

    anchor = int((host.directory / "run" / "virtlogd.pid").read_text().strip())
    if not _ours(host, anchor, "virtlogd"):
        raise RuntimeError("the second host's namespace is gone (no virtlogd): run scripts/second_host/up.sh")
    subprocess.run(  # noqa: S603 - fixed arguments, our own daemon
        [
            "/usr/bin/nsenter",
            f"--target={anchor}",
            "--mount",
            "--uts",
            "--",
            "/usr/bin/env",
            "-i",
            *DAEMON_ENV,
            "libvirtd",
            "--daemon",
            "--listen",
            "-f",
            "/etc/libvirt/libvirtd.conf",
            "-p",
            "/run/libvirtd.pid",
        ],
        check=True,
        timeout=timeout,
        capture_output=True,
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            libvirt.open(host.tcp_uri).close()
            pid = host.pid
            if _ours(host, pid, "libvirtd"):
                # This process's cached connections led to the killed daemon: the next call opens new ones
                # (a dead one only shows as dead at its first call, which would fail).
                for uri in (host.tcp_uri, host.ssh_uri, host.tls_uri):
                    forget(uri)
                return pid
        except (libvirt.libvirtError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the second host's libvirtd did not answer within {timeout} s")
        time.sleep(0.05)


def remove_named(uri: str, prefix: str) -> None:
    """Destroy and undefine the domains, delete the volumes and undefine the network filters (the NICs'
    anti-spoofing filter, once no domain uses it) of ``uri`` whose names start with ``prefix``."""
    import libvirt

    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains(0):
            if not dom.name().startswith(prefix):
                continue
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isPersistent():
                    dom.undefineFlags(
                        libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                        | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                    )
        for pool in conn.listAllStoragePools(0):
            with contextlib.suppress(libvirt.libvirtError):
                for vol in pool.listAllVolumes(0):
                    if vol.name().startswith(prefix):
                        vol.delete(0)
        undefine_nwfilters(conn, prefix)
    finally:
        conn.close()
