"""Issue #17 (7a): var/ (database with sessions, secret key, images) is private to the portal's user.

As another local user would try: each test makes its folders in a fresh ``lctest-`` folder under
/var/tmp that every user may enter (0755), lets the portal create its files there, then reads them as
``nobody`` with ``runuser``: that must fail. The folders are removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="reading as another user needs root (runuser)")


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    """Run ``argv`` as the unprivileged local user ``nobody`` (no supplementary groups)."""
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True, timeout=30)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_folder():
    """A folder every local user may enter, as the parent of a real installation's var/ usually is."""
    folder = Path(tempfile.mkdtemp(prefix="lctest-var-", dir="/var/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_nobody_can_read_the_database_or_the_secret_key(open_folder):
    """A fresh installation: ``manage.py migrate`` creates var/, its SQLite database and the secret key."""
    var = open_folder / "var"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "SECRET_KEY"}}
    env.update(LABCLOUD_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="portal.settings")
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrate.returncode == 0, migrate.stderr
    database, secret = var / "labcloud.sqlite3", var / "secret_key"
    assert database.stat().st_size > 0 and secret.exists()

    for target in (database, secret):
        refused = as_nobody("cat", str(target))
        assert refused.returncode != 0 and b"SQLite format" not in refused.stdout, target
        assert b"Permission denied" in refused.stderr
    assert as_nobody("ls", str(var)).returncode != 0
    assert mode(var) == 0o700
    for path in var.iterdir():
        assert mode(path) & 0o077 == 0, f"{path.name} is {oct(mode(path))}"


def test_an_existing_var_folder_is_made_private(open_folder):
    """An installation made before: var/ 0755 with a 0644 database; the next start tightens them."""
    var = open_folder / "var"
    var.mkdir(mode=0o755)
    (var / "labcloud.sqlite3").touch(mode=0o644)
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "SECRET_KEY"}}
    env.update(LABCLOUD_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="portal.settings")
    check = subprocess.run(
        [sys.executable, "manage.py", "check", "-v", "0"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    assert mode(var) == 0o700 and mode(var / "labcloud.sqlite3") == 0o600
    assert as_nobody("cat", str(var / "labcloud.sqlite3")).returncode != 0
