"""The OpenStack driver's HTTP sessions against a real local HTTP server (no cloud needed).

The server answers the first request of each connection with keep-alive, then reads the next request on
that connection and closes it without answering: exactly what a client sees when an API server or a
load balancer closes an idle kept-alive connection while the client reuses it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from keystoneauth1 import exceptions as ksa_exc
from keystoneauth1 import session as ksa_session

from portal.backends.openstack.driver import retry_stale_connections

BODY = b'{"ok": true}'


class ClosingServer:
    def __init__(self, *, answer: bool = True) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.requests: list[str] = []  # request lines, in order (including the unanswered ones)
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, name="lctest-closing-http", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_request(conn: socket.socket) -> str:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return ""
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
            0,
        )
        while len(rest) < length:
            rest += conn.recv(4096)
        return head.split(b"\r\n")[0].decode()

    def _connection(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            first = self._read_request(conn)
            if not first:
                return
            self.requests.append(first)
            if not self.answer:
                time.sleep(5)  # a cloud that hangs
                return
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
            )
            second = self._read_request(conn)
            if second:
                self.requests.append(second)
        conn.close()  # the second request on a connection is never answered

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def server():
    srv = ClosingServer()
    yield srv
    srv.close()


def session(*, retry: bool, timeout: float = 5) -> ksa_session.Session:
    sess = ksa_session.Session(timeout=timeout)
    if retry:
        retry_stale_connections(sess)
    return sess


def test_without_the_retry_a_closed_keepalive_connection_fails(server):
    sess = session(retry=False)
    assert sess.get(server.url, authenticated=False).json() == {"ok": True}
    with pytest.raises(ksa_exc.ConnectFailure):
        sess.get(server.url, authenticated=False)


def test_an_idempotent_request_is_sent_again_on_a_fresh_connection(server):
    sess = session(retry=True)
    for _ in range(3):
        assert sess.get(server.url, authenticated=False).json() == {"ok": True}
    assert sess.delete(server.url, authenticated=False).status_code == 200
    # each request after the first met a closed connection and was sent once more on a new one
    assert server.requests == ["GET / HTTP/1.1"] * 5 + ["DELETE / HTTP/1.1"] * 2


def test_a_post_is_never_sent_twice(server):
    sess = session(retry=True)
    assert sess.post(server.url, json={"n": 1}, authenticated=False).status_code == 200
    with pytest.raises(ksa_exc.ConnectFailure):
        sess.post(server.url, json={"n": 2}, authenticated=False)
    assert server.requests == ["POST / HTTP/1.1"] * 2  # the second one once, unanswered


def test_a_refused_connection_fails_at_once_as_before():
    closed = ClosingServer()
    closed.close()  # nothing listens on its port now
    for retry in (False, True):
        t0 = time.monotonic()
        with pytest.raises(ksa_exc.ConnectFailure):
            session(retry=retry).get(closed.url, authenticated=False)
        assert time.monotonic() - t0 < 0.5


def test_a_hanging_server_is_not_waited_for_twice():
    hanging = ClosingServer(answer=False)
    try:
        sess = session(retry=True, timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(ksa_exc.ConnectTimeout):
            sess.get(hanging.url, authenticated=False)
        assert time.monotonic() - t0 < 0.9
        assert hanging.requests == ["GET / HTTP/1.1"]
    finally:
        hanging.close()
