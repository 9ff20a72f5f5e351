"""Fixtures shared by every app's tests."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from portal.models import Membership, Tenant
from portal.services import ensure_quota
from portal.testing import Actors, undefine_nwfilters

pytest_plugins = ["portal.testing_second_host"]  # the second libvirt host: second_host, second_host_row


@pytest.fixture(scope="session", autouse=True)
def _session_domain_prefix():
    """Whatever a test creates on the real libvirtd without its own ``lctest-…`` prefix is named with this
    session's prefix instead of the production ``labcloud-`` one, and removed (and reported) at the end:
    a test never leaves, nor touches, anything of a portal that runs on the same machine."""
    import contextlib
    import secrets
    import warnings

    from django.conf import settings

    prefix = f"lctest-s{secrets.token_hex(3)}-"
    previous, settings.LABCLOUD_DOMAIN_PREFIX = settings.LABCLOUD_DOMAIN_PREFIX, prefix
    yield prefix
    settings.LABCLOUD_DOMAIN_PREFIX = previous
    try:
        import libvirt

        conn = libvirt.open("qemu:///system")
    except Exception:  # no libvirtd in this run (fast unit tests only): nothing can be left there
        return
    left = []
    with contextlib.suppress(libvirt.libvirtError):
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(prefix):
                left.append(f"domain {dom.name()}")
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        for pool in conn.listAllStoragePools(0):
            with contextlib.suppress(libvirt.libvirtError):
                for vol in pool.listAllVolumes(0):
                    if vol.name().startswith(prefix):
                        left.append(f"volume {vol.name()}")
                        with contextlib.suppress(libvirt.libvirtError):
                            vol.delete(0)
        left += [f"nwfilter {name}" for name in undefine_nwfilters(conn, prefix)]
    conn.close()
    if left:
        warnings.warn(f"tests left on qemu:///system (removed): {', '.join(left)}", stacklevel=1)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Tests create many users; the production hasher's 1M PBKDF2 rounds would dominate the run time."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _isolated_request_state():
    """Each test starts in English with an empty cache (throttle counters live there; user ids repeat)."""
    from django.core.cache import cache
    from django.utils import translation

    cache.clear()
    translation.activate("en")
    yield
    translation.deactivate()
    cache.clear()


@pytest.fixture(scope="session", autouse=True)
def _end_stray_database_sessions(django_db_setup, django_db_blocker):
    """On PostgreSQL, end the test database's other sessions before pytest-django drops it.

    Threads that ran database code for async consumers and live servers (asgiref's thread pools,
    the live server's request threads) keep their thread-local connections open until they exit,
    which is after the last test; DROP DATABASE then fails with "being accessed by other users".
    """
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture
def make_user(db):
    User = get_user_model()

    def make(username: str, *, staff: bool = False, password: str = "pw-Secret-123"):  # noqa: S107 - test fixture
        user = User.objects.create_user(username=username, password=password, email=f"{username}@example.test")
        if staff:
            user.is_staff = True
            user.is_superuser = True
            user.save()
        return user

    return make


@pytest.fixture
def make_tenant(db):
    def make(name: str, **limits: int) -> Tenant:
        from django.utils.text import slugify

        tenant = Tenant.objects.create(name=name, slug=slugify(name))
        ensure_quota(tenant=tenant, limits=limits or None)
        return tenant

    return make


@pytest.fixture
def actors(make_user, make_tenant) -> Actors:
    tenant = make_tenant("Tenant A")
    other = make_tenant("Tenant B")
    outsider = make_user("outsider")
    member = make_user("member")
    tenant_admin = make_user("tadmin")
    cloud_admin = make_user("cloudadmin", staff=True)
    Membership.objects.create(user=outsider, tenant=other, role=Membership.Role.ADMIN)
    Membership.objects.create(user=member, tenant=tenant, role=Membership.Role.MEMBER)
    Membership.objects.create(user=tenant_admin, tenant=tenant, role=Membership.Role.ADMIN)
    return Actors(
        tenant=tenant,
        other_tenant=other,
        outsider=outsider,
        member=member,
        tenant_admin=tenant_admin,
        cloud_admin=cloud_admin,
    )


def pytest_unconfigure(config):
    """Django deletes this process's SQLite test database but not its write-ahead log files: remove them too."""
    from pathlib import Path

    from django.conf import settings

    name = settings.DATABASES["default"].get("TEST", {}).get("NAME")
    if name and settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") and not Path(name).exists():
        for suffix in ("-wal", "-shm"):
            Path(f"{name}{suffix}").unlink(missing_ok=True)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``postgres`` need real row locks: they run in the PostgreSQL pass of the suite
    (scripts/test.sh runs the suite on SQLite and then on PostgreSQL) and are deselected on SQLite."""
    from django.conf import settings

    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    selected, deselected = [], []
    for item in items:
        (deselected if item.get_closest_marker("postgres") else selected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.fixture
def browser_page(monkeypatch):
    """A page of Debian's Chromium (headless) and the list of JS errors it reported."""
    from portal.testing import BROWSER_TIMEOUT_MS, CHROMIUM, CHROMIUM_ARGS, console_error

    if not CHROMIUM.exists():
        pytest.fail("Debian's Chromium is missing: `make test` installs it (scripts/bootstrap.sh --test)")
    from playwright import sync_api

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1440, "height": 1000}, locale="en-US")
        context.set_default_timeout(BROWSER_TIMEOUT_MS)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(console_error(msg)) if msg.type == "error" else None)
        try:
            yield page, errors
        finally:
            context.close()
            browser.close()
