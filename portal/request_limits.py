"""ASGI middleware: refuse request bodies over LABCLOUD_MAX_REQUEST_BYTES before anything spools them.

Django's ASGI handler reads the whole body into a temporary file before any view or
middleware runs, so a size check in a view comes too late to protect the disk.
"""

from __future__ import annotations

from django.conf import settings


class RequestBodyLimit:
    def __init__(self, app, *, limit: int | None = None) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit if self.limit is not None else settings.LABCLOUD_MAX_REQUEST_BYTES
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            return await self._too_large(receive, send, limit)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a body without (or lying about) its Content-Length
                    return {"type": "http.disconnect"}
            return message

        return await self.app(scope, counting_receive, send)

    @staticmethod
    async def _too_large(receive, send, limit: int) -> None:
        body = (
            b'{"type": "https://labcloud.invalid/problems/too_large", "title": "Request too large", '
            b'"status": 413, "code": "too_large", "detail": "The request body exceeds '
            + str(limit).encode()
            + b' bytes; send a large file in chunks."}'
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/problem+json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})
