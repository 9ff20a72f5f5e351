"""Oversized request bodies are refused before Django reads them."""

import asyncio

from portal.request_limits import RequestBodyLimit


def run(*, headers, chunks, limit=10):
    sent = []
    seen = {"app_called": False, "messages": []}

    async def inner(scope, receive, send):
        seen["app_called"] = True
        while True:
            message = await receive()
            seen["messages"].append(message["type"])
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break

    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return queue.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": headers}
    asyncio.run(RequestBodyLimit(inner, limit=limit)(scope, receive, send))
    return sent, seen


def test_declared_length_over_the_limit_is_refused_with_413():
    sent, seen = run(headers=[(b"content-length", b"11")], chunks=[b"x" * 11])
    assert sent[0]["status"] == 413
    assert b"too_large" in sent[1]["body"]
    assert not seen["app_called"]


def test_a_body_longer_than_declared_is_cut_off():
    _sent, seen = run(headers=[(b"content-length", b"5")], chunks=[b"x" * 6, b"x" * 6])
    assert seen["messages"] == ["http.request", "http.disconnect"]


def test_small_bodies_pass():
    sent, seen = run(headers=[(b"content-length", b"10")], chunks=[b"x" * 10])
    assert sent == [] and seen["messages"] == ["http.request"]
