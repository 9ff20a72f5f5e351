"""A network namespace of a test's own, for attacks that need addresses this machine does not have.

``IsolatedNet`` creates ``lctest-<random>`` (``ip netns add``) with only a loopback interface, up,
carrying the extra addresses the test asks for (e.g. a global address that stands for a public
server). Nothing in it reaches another machine: it has no other interface and no route out.

* ``socket()`` makes a socket *inside* the namespace from a short-lived thread that enters it
  (``setns`` changes the calling thread only); the test serves it from its own threads.
* ``resolver()`` answers DNS queries inside the namespace on the addresses ``/etc/resolv.conf``
  names: those addresses are put on the namespace's loopback, so a process in the namespace uses
  the machine's unchanged resolver configuration and reaches the test's DNS server (glibc's real
  lookup path), and a query never leaves the machine.
* ``bridge()`` lets processes in the namespace reach a TCP service of the machine (PostgreSQL,
  Redis) at the same address and port, through a forwarder of the test's.
* ``command()`` is the argv that runs a program in the namespace (``nsenter --net``).

Needs root, iproute2 and nsenter; ``unavailable()`` says why not, or that the machine's name
lookups would not stay inside the namespace (nscd, systemd-resolved or another NSS source).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import secrets
import socket
import struct
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

CLONE_NEWNET = 0x40000000
RESOLV_CONF = Path("/etc/resolv.conf")
NSSWITCH = Path("/etc/nsswitch.conf")
SAFE_HOST_SOURCES = {"files", "dns", "myhostname"}


def nameservers() -> list[str]:
    servers = []
    for line in RESOLV_CONF.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            servers.append(parts[1].split("%")[0])
    return servers


def unavailable() -> str:
    """Why the namespace cannot be used here ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root (ip netns, nsenter)"
    for tool in ("ip", "nsenter"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"needs {tool}"
    if Path("/var/run/nscd/socket").exists():
        return "nscd would resolve names outside the namespace"
    if NSSWITCH.exists():
        for line in NSSWITCH.read_text().splitlines():
            if line.split(":")[0].strip() == "hosts":
                sources = {word for word in line.split(":", 1)[1].split() if not word.startswith("[")}
                if sources - SAFE_HOST_SOURCES:
                    return f"name lookups use {sorted(sources - SAFE_HOST_SOURCES)}, which would leave the namespace"
    if not nameservers():
        return "/etc/resolv.conf names no nameserver"
    return ""


class IsolatedNet:
    def __init__(self, addresses: list[str]) -> None:
        self.name = f"lctest-{secrets.token_hex(4)}"
        self.path = Path("/run/netns") / self.name
        self.addresses = list(addresses)
        self._closers: list[Callable[[], None]] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # ------------------------------------------------------------------ set-up and tear-down

    def __enter__(self) -> IsolatedNet:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            self._ip("link", "set", "lo", "up")
            for address in [*self.addresses, *nameservers()]:
                prefix = 32 if ipaddress.ip_address(address).version == 4 else 128
                if not ipaddress.ip_address(address).is_loopback:
                    self._ip("addr", "add", f"{address}/{prefix}", "dev", "lo")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        for closer in reversed(self._closers):
            with contextlib.suppress(OSError):
                closer()
        for thread in self._threads:
            thread.join(timeout=5)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def _thread(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    # ------------------------------------------------------------------ inside the namespace

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket in the namespace (created by a thread that entered it; the socket stays there)."""
        made: list = []

        def enter_and_make() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(self.path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    made.append(OSError(ctypes.get_errno(), "setns failed"))
                    return
                made.append(socket.socket(family, kind))
            finally:
                os.close(fd)

        thread = threading.Thread(target=enter_and_make)
        thread.start()
        thread.join()
        if isinstance(made[0], Exception):
            raise made[0]
        sock = made[0]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._closers.append(sock.close)
        return sock

    def command(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def holds(self, pid: int) -> bool:
        """Is process ``pid`` in this namespace?"""
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------------ services

    def resolver(self, names: set[str], answer: Callable[[str], str]) -> None:
        """Serve DNS inside the namespace on the machine's nameserver addresses.

        ``names`` exist; every other name gets NXDOMAIN. An A query for one of them is answered with
        the IPv4 address ``answer(name)`` returns (called once per query, TTL 0: never cached); any
        other query type gets an empty answer.
        """
        for server in nameservers():
            family = socket.AF_INET6 if ipaddress.ip_address(server).version == 6 else socket.AF_INET
            sock = self.socket(family, socket.SOCK_DGRAM)
            sock.bind((server, 53))
            sock.settimeout(0.2)
            self._thread(self._serve_dns, sock, names, answer)

    def _serve_dns(self, sock: socket.socket, names: set[str], answer: Callable[[str], str]) -> None:
        while not self._stop.is_set():
            try:
                query, peer = sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(ValueError, IndexError, struct.error, OSError):
                sock.sendto(dns_reply(query, names, answer), peer)

    def bridge(self, host: str, port: int) -> None:
        """Processes in the namespace reach ``host:port`` of the machine at the same address."""
        listener = self.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        listener.bind((host, port))
        listener.listen(64)
        listener.settimeout(0.2)
        self._thread(self._accept, listener, host, port)

    def _accept(self, listener: socket.socket, host: str, port: int) -> None:
        while not self._stop.is_set():
            try:
                inside, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            inside.settimeout(None)
            try:
                outside = socket.create_connection((host, port))  # this thread is in the machine's namespace
            except OSError:
                inside.close()
                continue
            self._closers += [inside.close, outside.close]
            self._thread(_pump, inside, outside)
            self._thread(_pump, outside, inside)


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


def dns_reply(query: bytes, names: set[str], answer: Callable[[str], str]) -> bytes:
    """The reply to one DNS query (RFC 1035): one A record with TTL 0, an empty answer, or NXDOMAIN."""
    ident, flags = struct.unpack("!HH", query[:4])
    labels, pos = [], 12
    while query[pos]:
        length = query[pos]
        labels.append(query[pos + 1 : pos + 1 + length].decode("ascii"))
        pos += 1 + length
    qtype, _qclass = struct.unpack("!HH", query[pos + 1 : pos + 5])
    question = query[12 : pos + 5]
    name = ".".join(labels).lower()
    exists = name in names
    records = b""
    if exists and qtype == 1:
        records = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + socket.inet_aton(answer(name))
    reply_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | (0 if exists else 3)
    return struct.pack("!HHHHHH", ident, reply_flags, 1, 1 if records else 0, 0, 0) + question + records
