"""Files and folders of the portal's own (var/, the image store): the portal's user's alone.

Standard library only: ``portal.settings`` uses it before Django is set up.
"""

from __future__ import annotations

from pathlib import Path


def private_path(path: Path, mode: int) -> None:
    """Take the group's and other users' access away from ``path`` (0700 for folders, 0600 for files).

    Nothing happens when ``path`` is already private, is gone, or belongs to another user this process
    may not change.
    """
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(mode)
    except (FileNotFoundError, PermissionError):
        pass
