"""Failed sign-ins are throttled per account and per client address, on the dashboard and in the admin site.

The attacker's side first, through the real login pages (Django's test client sets the
client address with REMOTE_ADDR; the addresses are documentation ranges, no traffic leaves):

- one address guessing one account's password,
- several addresses guessing one account's password (a botnet),
- one address trying a few passwords on many accounts (password spraying),

each ends locked out with the documented message and one audit event, while the owner's
correct password behaves as docs/access-control.md says: refused while the account (or the
address it comes from) is locked, accepted from elsewhere when only the attacker's address
is locked. Defaults: 5 failures per account, 20 per address, within 15 minutes.
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from portal.models import AuditEvent
from portal.testing import child_process, database_url_of_this_test, free_port

pytestmark = pytest.mark.django_db

PASSWORD = "pw-Secret-123"  # make_user's
WRONG = "not-the-password"
ACCOUNT_LIMIT = 5
ADDRESS_LIMIT = 20
ATTACKER = "203.0.113.66"
OWNER = "198.51.100.10"
LOCKED = "Too many failed sign-in attempts; try again in 15 minutes."
INVALID = "Please enter a correct username and password."


def attempt(username: str, password: str, ip: str, *, url: str | None = None, language: str | None = None):
    """One sign-in from a fresh client (an attacker keeps no cookies) at ``ip``; the response."""
    headers = {"accept-language": language} if language else {}
    client = Client(headers=headers)
    response = client.post(url or reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip)
    response.signed_in = "_auth_user_id" in client.session
    return response


def text(response) -> str:
    return response.content.decode()


def lockouts():
    return list(AuditEvent.objects.filter(action="auth.lockout").order_by("id"))


def test_one_address_guessing_one_account_is_locked_out(make_user):
    make_user("alice")
    for n in range(1, ACCOUNT_LIMIT):
        response = attempt("alice", WRONG, ATTACKER)
        assert not response.signed_in
        assert INVALID in text(response), n
    response = attempt("alice", WRONG, ATTACKER)  # the 5th failure locks the account
    assert not response.signed_in and LOCKED in text(response)
    # Locked: even the right password is not checked, from the attacker's address or the owner's.
    for ip in (ATTACKER, OWNER):
        response = attempt("alice", PASSWORD, ip)
        assert not response.signed_in, ip
        assert LOCKED in text(response)
    events = lockouts()
    assert len(events) == 1
    assert events[0].ip == ATTACKER and events[0].outcome == AuditEvent.Outcome.DENIED
    assert events[0].detail["username"] == "alice" and events[0].detail["scope"] == "account"
    assert events[0].detail["via"] == "dashboard"


def test_several_addresses_against_one_account_lock_the_account(make_user):
    make_user("alice")
    make_user("bob")
    bots = [f"203.0.113.{n}" for n in range(10, 10 + ACCOUNT_LIMIT)]
    for ip in bots:
        response = attempt("alice", WRONG, ip)
        assert not response.signed_in
    assert LOCKED in text(response)
    response = attempt("alice", PASSWORD, OWNER)
    assert not response.signed_in and LOCKED in text(response)
    # The addresses themselves are not locked (one failure each): another account signs in from one of them.
    assert attempt("bob", PASSWORD, bots[0]).signed_in
    assert [(e.detail["scope"], e.detail["username"]) for e in lockouts()] == [("account", "alice")]


def test_one_address_against_several_accounts_locks_the_address(make_user):
    victims = [make_user(f"user{n}") for n in range(ADDRESS_LIMIT // 2)]
    make_user("carol")
    failures = 0
    for _round in range(2):  # two passwords tried on every account: no account reaches its own limit
        for victim in victims:
            response = attempt(victim.username, WRONG, ATTACKER)
            failures += 1
            assert not response.signed_in
    assert failures == ADDRESS_LIMIT
    assert LOCKED in text(response)
    # The address is locked for every account, even with a right password …
    response = attempt("carol", PASSWORD, ATTACKER)
    assert not response.signed_in and LOCKED in text(response)
    # … while the accounts it tried still sign in from their owners' addresses.
    for victim in victims[:3]:
        assert attempt(victim.username, PASSWORD, OWNER).signed_in
    events = lockouts()
    assert [(e.detail["scope"], e.ip) for e in events] == [("address", ATTACKER)]


def test_successful_sign_in_resets_the_account_counter(make_user):
    make_user("alice")
    for _ in range(ACCOUNT_LIMIT - 1):
        assert not attempt("alice", WRONG, OWNER).signed_in
    assert attempt("alice", PASSWORD, OWNER).signed_in
    for _ in range(ACCOUNT_LIMIT - 1):
        assert not attempt("alice", WRONG, OWNER).signed_in
    assert attempt("alice", PASSWORD, OWNER).signed_in  # 4 failures since the last success: not locked
    for _ in range(ACCOUNT_LIMIT):
        response = attempt("alice", WRONG, OWNER)
    assert LOCKED in text(response)
    assert not attempt("alice", PASSWORD, OWNER).signed_in


def test_unknown_accounts_lock_like_real_ones(db):
    """The answers do not tell which user names exist."""
    for _ in range(ACCOUNT_LIMIT):
        response = attempt("ghost", WRONG, ATTACKER)
    assert LOCKED in text(response)
    assert [e.detail["username"] for e in lockouts()] == ["ghost"]


def test_admin_login_is_throttled(make_user):
    make_user("root", staff=True)
    url = reverse("admin:login")
    for _ in range(ACCOUNT_LIMIT - 1):
        response = attempt("root", WRONG, ATTACKER, url=url)
        assert not response.signed_in and "Please enter the correct username and password" in text(response)
    response = attempt("root", WRONG, ATTACKER, url=url)
    assert LOCKED in text(response)
    response = attempt("root", PASSWORD, OWNER, url=url)
    assert not response.signed_in and LOCKED in text(response)
    # The dashboard's login shares the counters: the account is locked there too.
    assert LOCKED in text(attempt("root", PASSWORD, OWNER))
    events = lockouts()
    assert len(events) == 1 and events[0].detail["via"] == "admin"


def test_failures_on_both_login_pages_add_up(make_user):
    make_user("root", staff=True)
    for n in range(ACCOUNT_LIMIT):
        url = reverse("admin:login") if n % 2 else reverse("login")
        response = attempt("root", WRONG, ATTACKER, url=url)
    assert LOCKED in text(response)


def test_lockout_message_is_translated(make_user):
    make_user("alice")
    for _ in range(ACCOUNT_LIMIT):
        response = attempt("alice", WRONG, ATTACKER, language="zh-Hans,zh;q=0.9")
    html = text(response)
    assert "登录失败次数过多，请在 15 分钟后重试。" in html
    assert "Too many failed" not in html
    response = attempt("alice", PASSWORD, OWNER, url=reverse("admin:login"), language="zh-Hans")
    assert "登录失败次数过多，请在 15 分钟后重试。" in text(response)


# ---------------------------------------------------------------- how long, and the settings


def age_failures(minutes: float) -> None:
    """Move every recorded failure ``minutes`` into the past (the clock, as far as the counters care)."""
    from portal.models import LoginFailure

    for failure in LoginFailure.objects.all():
        failure.created_at -= timedelta(minutes=minutes)
        failure.save(update_fields=["created_at"])


def test_lock_ends_when_the_failures_leave_the_window(make_user):
    make_user("alice")
    for _ in range(ACCOUNT_LIMIT):
        attempt("alice", WRONG, ATTACKER)
    age_failures(9.5)
    response = attempt("alice", PASSWORD, OWNER)
    assert not response.signed_in
    assert "Too many failed sign-in attempts; try again in 6 minutes." in text(response)
    age_failures(5)  # 14.5 minutes ago
    assert "try again in 1 minute." in text(attempt("alice", PASSWORD, OWNER))
    age_failures(0.6)  # 15.1 minutes: outside the window
    assert attempt("alice", PASSWORD, OWNER).signed_in


def test_failures_while_locked_are_not_counted(make_user):
    """A locked account does not stay locked forever because the attacker keeps trying."""
    make_user("alice")
    for _ in range(ACCOUNT_LIMIT):
        attempt("alice", WRONG, ATTACKER)
    for _ in range(10):
        attempt("alice", WRONG, ATTACKER)
    from portal.models import LoginFailure

    assert LoginFailure.objects.count() == ACCOUNT_LIMIT
    assert len(lockouts()) == 1


def test_limits_come_from_the_settings(make_user, settings):
    settings.LOGIN_FAILURES_PER_ACCOUNT = 2
    settings.LOGIN_FAILURES_PER_ADDRESS = 0  # off
    settings.LOGIN_FAILURE_WINDOW_MINUTES = 60
    make_user("alice")
    attempt("alice", WRONG, ATTACKER)
    response = attempt("alice", WRONG, ATTACKER)
    assert "Too many failed sign-in attempts; try again in 60 minutes." in text(response)
    for n in range(30):  # no address limit: spraying other names goes on (each name: one failure)
        assert INVALID in text(attempt(f"name{n}", WRONG, ATTACKER))


def test_ipv6_addresses_count_per_64_network(make_user):
    """A client with an IPv6 network has millions of addresses: its /64 counts as one address."""
    for n in range(ADDRESS_LIMIT):
        response = attempt(f"name{n}", WRONG, f"2001:db8:1:2::{n + 1:x}")
    assert LOCKED in text(response)
    make_user("alice")
    assert not attempt("alice", PASSWORD, "2001:db8:1:2:ffff::1").signed_in
    assert attempt("alice", PASSWORD, "2001:db8:1:3::1").signed_in


def test_the_settings_defaults_are_the_documented_ones():
    assert settings.LOGIN_FAILURES_PER_ACCOUNT == ACCOUNT_LIMIT
    assert settings.LOGIN_FAILURES_PER_ADDRESS == ADDRESS_LIMIT
    assert settings.LOGIN_FAILURE_WINDOW_MINUTES == 15


def test_old_failures_are_purged(make_user):
    from portal.models import LoginFailure

    attempt("alice", WRONG, ATTACKER)
    age_failures(16)
    attempt("bob", WRONG, ATTACKER)
    assert list(LoginFailure.objects.values_list("username", flat=True)) == ["bob"]
    assert timezone.now() - LoginFailure.objects.get().created_at < timedelta(minutes=1)


# ---------------------------------------------------------------- for real: daphne behind a proxy


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def http_sign_in(base: str, username: str, password: str, forwarded_for: str) -> tuple[int, str]:
    """Sign in over HTTP as a browser behind nginx would (CSRF cookie and token); (status, page or Location)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
    headers = {"X-Forwarded-For": forwarded_for}
    url = base + reverse("login")  # http://127.0.0.1:<port>
    with opener.open(urllib.request.Request(url, headers=headers), timeout=30) as page:  # noqa: S310
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.read().decode())[1]
    body = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": username, "password": password})
    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")  # noqa: S310
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:  # the 302 of a successful sign-in (not followed)
        return exc.code, exc.headers.get("Location", "")


@pytest.mark.django_db(transaction=True)
def test_daphne_with_proxy_headers_counts_each_forwarded_address(settings, make_user, tmp_path):
    """Under the ASGI server with the web unit's --proxy-headers, nginx's X-Forwarded-For is the client address."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]  # what daphne checks with
    make_user("alice")
    make_user("bob")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of_this_test(),
        "ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "LOGIN_FAILURES_PER_ACCOUNT": "2",
        "LOGIN_FAILURES_PER_ADDRESS": "3",
        "LOGIN_FAILURE_WINDOW_MINUTES": "10",
    }
    args = [sys.executable, "-m", "daphne", "--proxy-headers", "-b", "127.0.0.1", "-p", str(port)]
    with child_process([*args, "portal.asgi:application"], env=env, log=tmp_path / "daphne.log", port=port):
        base = f"http://127.0.0.1:{port}"
        assert INVALID in http_sign_in(base, "alice", WRONG, ATTACKER)[1]
        status, page = http_sign_in(base, "alice", WRONG, ATTACKER)
        assert status == 200 and "Too many failed sign-in attempts; try again in 10 minutes." in page
        assert "try again in 10 minutes" in http_sign_in(base, "alice", PASSWORD, OWNER)[1]  # account locked
        # A third failure from the attacker's forwarded address locks that address (limit 3) …
        assert "try again in 10 minutes" in http_sign_in(base, "somebody", WRONG, ATTACKER)[1]
        assert "try again in 10 minutes" in http_sign_in(base, "bob", PASSWORD, ATTACKER)[1]
        # … not the proxy's own address: bob signs in through the same proxy from elsewhere.
        assert http_sign_in(base, "bob", PASSWORD, OWNER) == (302, reverse("overview"))
    assert [(e.detail["scope"], e.ip) for e in lockouts()] == [("account", ATTACKER), ("address", ATTACKER)]


def test_cloud_admin_lifts_a_lock_in_the_admin_site(make_user):
    from portal.models import LoginFailure

    make_user("alice")
    admin_user = make_user("root", staff=True)
    for _ in range(ACCOUNT_LIMIT):
        attempt("alice", WRONG, ATTACKER)
    assert not attempt("alice", PASSWORD, OWNER).signed_in
    client = Client()
    client.force_login(admin_user)
    changelist = reverse("admin:portal_loginfailure_changelist")
    page = client.get(changelist)
    assert page.status_code == 200 and "alice" in text(page) and ATTACKER in text(page)
    ids = [str(pk) for pk in LoginFailure.objects.values_list("pk", flat=True)]
    response = client.post(changelist, {"action": "delete_selected", "_selected_action": ids, "post": "yes"})
    assert response.status_code == 302
    assert not LoginFailure.objects.exists()
    assert attempt("alice", PASSWORD, OWNER).signed_in
    unlock = AuditEvent.objects.get(action="auth.unlock")
    assert unlock.username == "root" and unlock.detail["usernames"] == ["alice"]
    assert unlock.detail["addresses"] == [ATTACKER] and unlock.detail["failures"] == ACCOUNT_LIMIT


def test_members_do_not_see_the_failures(actors):
    client = Client()
    client.force_login(actors.tenant_admin)
    response = client.get(reverse("admin:portal_loginfailure_changelist"))
    assert response.status_code == 302  # to the admin login: not staff
