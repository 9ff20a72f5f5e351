"""What never reaches a user: server paths in messages that come from programs (qemu-img, libvirt)."""

from __future__ import annotations

import re

# An absolute path: a "/" not inside a word, a URL or another path, up to whitespace, a quote or punctuation.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/[^\s'\",;:]+")


def without_server_paths(text: str) -> str:
    """``text`` with every absolute path replaced by "…" (URLs such as qemu+ssh://h/system stay)."""
    return _ABSOLUTE_PATH.sub("…", text)
