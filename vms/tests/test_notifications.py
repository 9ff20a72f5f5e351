"""The notification history (vms.notifications): finished operations through the access gate, unread counting
with the per-user mark, links to targets that still exist, texts in the reader's language; its pages and API."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext_noop

from images.models import Image
from portal.factories import make_instance
from portal.models import Membership
from portal.services import create_api_token
from portal.testing import assert_access_matrix, assert_constant_queries, count_queries
from portal.tests.test_i18n import ensure_compiled_messages
from vms import notifications, operations
from vms.models import NotificationMark, Operation
from vms.operations import said

pytestmark = pytest.mark.django_db

HISTORY = reverse("notifications")
MENU = reverse("notification_menu")
READ = reverse("notifications_read")
API = "/api/v1/notifications/"


def finish(target, *, kind: str = "instance.reboot", failed: bool = False, message="", user=None) -> Operation:
    """An operation of ``target``'s tenant, run and ended the worker's way (vms.operations)."""
    operation = operations.create_operation(kind=kind, target=target, tenant=target.tenant, user=user)
    operation = operations.begin(operation_id=operation.pk)
    if failed:
        operations.fail(
            operation=operation,
            error=message or gettext_noop("The image of this instance is gone or no longer active."),
        )
    else:
        operations.succeed(operation=operation, message=message)
    return operation


@pytest.fixture
def lab(actors):
    mine = make_instance(actors.tenant, name="web")
    theirs = make_instance(actors.other_tenant, name="secret-box")
    return mine, theirs


# ---------------------------------------------------------------- selectors and the service


def test_only_finished_operations_of_the_users_tenants_are_listed(actors, lab):
    mine, theirs = lab
    done = finish(mine)
    failed = finish(mine, kind="instance.snapshot_create", failed=True)
    finish(theirs)
    finish(theirs, failed=True)
    operations.create_operation(kind="instance.start", target=mine, tenant=actors.tenant)  # queued: not news yet
    running = operations.create_operation(kind="instance.stop", target=mine, tenant=actors.tenant)
    operations.begin(operation_id=running.pk)

    for user in (actors.member, actors.tenant_admin):
        listed = list(notifications.notifications_for(user=user))
        assert listed == [failed, done]  # newest first, nothing of tenant B, nothing unfinished
        assert notifications.unread_count(user=user) == 2
        assert [n.id for n in notifications.latest_notifications(user=user)] == [failed.pk, done.pk]
    assert list(notifications.notifications_for(user=actors.member, failed_only=True)) == [failed]
    # The outsider sees tenant B's two only; a cloud admin, as on the live socket's staff group, all four.
    outsider = notifications.latest_notifications(user=actors.outsider)
    assert {n.target for n in outsider} == {"secret-box"}
    assert notifications.unread_count(user=actors.outsider) == 2
    assert notifications.unread_count(user=actors.cloud_admin) == 4


def test_losing_a_membership_takes_the_tenants_operations_away(actors, lab):
    mine, _theirs = lab
    finish(mine)
    assert notifications.unread_count(user=actors.member) == 1
    Membership.objects.filter(user=actors.member, tenant=actors.tenant).delete()
    assert notifications.unread_count(user=actors.member) == 0
    assert notifications.latest_notifications(user=actors.member) == []


def test_mark_all_read_counts_again_from_there(actors, lab):
    mine, _theirs = lab
    first = finish(mine)
    assert notifications.unread_count(user=actors.member) == 1
    notifications.mark_all_read(user=actors.member)
    assert notifications.unread_count(user=actors.member) == 0
    assert notifications.unread_count(user=actors.tenant_admin) == 1  # each user's own mark
    assert [n.unread for n in notifications.latest_notifications(user=actors.member)] == [False]

    later = finish(mine, failed=True)
    assert notifications.unread_count(user=actors.member) == 1
    assert [(n.id, n.unread) for n in notifications.latest_notifications(user=actors.member)] == [
        (later.pk, True),
        (first.pk, False),
    ]
    # The mark never moves back.
    mark = NotificationMark.objects.get(user=actors.member)
    notifications.mark_all_read(user=actors.member, until=mark.seen_until - timedelta(days=1))
    assert NotificationMark.objects.get(user=actors.member).seen_until == mark.seen_until


def test_what_finished_before_a_users_account_was_made_is_read(actors, lab, make_user):
    mine, _theirs = lab
    finish(mine)
    newcomer = make_user("newcomer")
    Membership.objects.create(user=newcomer, tenant=actors.tenant, role=Membership.Role.MEMBER)
    assert notifications.unread_count(user=newcomer) == 0
    assert len(notifications.latest_notifications(user=newcomer)) == 1  # in the history all the same


def test_the_count_stops_at_the_limit(actors, lab):
    mine, _theirs = lab
    now = timezone.now()
    Operation.objects.bulk_create(
        Operation(
            kind="instance.reboot",
            tenant=actors.tenant,
            target_type="vms.instance",
            target_id=str(mine.pk),
            target_repr=mine.name,
            state=Operation.State.SUCCEEDED,
            finished_at=now + timedelta(seconds=i),
        )
        for i in range(notifications.UNREAD_LIMIT + 5)
    )
    assert notifications.unread_count(user=actors.member) == notifications.UNREAD_LIMIT
    assert notifications.badge(notifications.UNREAD_LIMIT) == "99+"
    assert notifications.badge(7) == "7"


def test_links_only_to_targets_that_exist_and_the_reader_may_see(actors, lab):
    mine, _theirs = lab
    gone = make_instance(actors.tenant, name="gone")
    private = Image.objects.create(name="theirs", tenant=actors.other_tenant, status="active", size=1)
    kept = finish(mine)
    removed = finish(gone, kind="instance.delete")
    gone.delete()
    # An operation of tenant A about an image A's members may not see (say, shared away and withdrawn).
    image_op = Operation.objects.create(
        kind="image.process",
        tenant=actors.tenant,
        target_type="images.image",
        target_id=str(private.pk),
        target_repr="theirs",
        state=Operation.State.SUCCEEDED,
        finished_at=timezone.now(),
    )
    listed = {n.id: n for n in notifications.latest_notifications(user=actors.member)}
    assert listed[kept.pk].target_url == reverse("instance_detail", args=[mine.pk])
    assert listed[removed.pk].target_url == "" and listed[removed.pk].target == "gone"
    assert listed[image_op.pk].target_url == ""
    staff = {n.id: n for n in notifications.latest_notifications(user=actors.cloud_admin)}
    assert staff[image_op.pk].target_url == reverse("image_detail", args=[private.pk])


def test_texts_are_translated_for_each_reader(actors, lab):
    ensure_compiled_messages()
    mine, _theirs = lab
    finish(mine, kind="instance.launch", message=gettext_noop("Instance is running."))
    finish(mine, failed=True, message=said(gettext_noop("The worker running this operation stopped %(n)d times."), n=3))
    with translation.override("en"):
        english = notifications.latest_notifications(user=actors.member)
    with translation.override("zh-hans"):
        chinese = notifications.latest_notifications(user=actors.member)
    assert [n.text for n in english] == ["The worker running this operation stopped 3 times.", "Instance is running."]
    assert [n.label for n in english] == ["Reboot", "Launch"]
    for n in chinese:
        assert n.text and not any("a" <= c.lower() <= "z" for c in n.text), n.text
        assert n.label not in ("Reboot", "Launch")


def test_selectors_run_a_fixed_number_of_queries(actors, lab):
    mine, _theirs = lab
    image = Image.objects.create(name="img", tenant=actors.tenant, status="active", size=1)

    def make_rows(n):
        for _ in range(n):
            finish(mine)
            finish(image, kind="image.process", failed=True)

    make_rows(1)
    assert count_queries(lambda: notifications.unread_count(user=actors.member)) == 1
    for role in ("member", "cloud_admin"):
        user = getattr(actors, role)
        assert_constant_queries(make_rows, lambda user=user: notifications.latest_notifications(user=user), budget=4)


# ---------------------------------------------------------------- pages


def test_pages_are_for_signed_in_users(actors, lab):
    assert_access_matrix(
        actors,
        method="get",
        url=HISTORY,
        expected={"anonymous": 302, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
        api=False,
    )
    assert_access_matrix(
        actors,
        method="get",
        url=MENU,
        expected={"anonymous": 302, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
        api=False,
    )


def test_the_bell_is_on_every_page_with_the_unread_count(actors, lab, client):
    mine, _theirs = lab
    finish(mine)
    finish(mine, failed=True)
    client.force_login(actors.member)
    html = client.get(reverse("keypairs")).content.decode()
    assert 'id="lc-bell"' in html and "portal/notifications.js" in html
    assert 'data-unread="2"' in html
    client.post(READ)
    assert 'data-unread="0"' in client.get(reverse("keypairs")).content.decode()
    # Signed out: no bell.
    client.logout()
    assert 'id="lc-bell"' not in client.get(reverse("login")).content.decode()


def test_history_page_lists_filters_and_pages(actors, lab, client):
    mine, theirs = lab
    for i in range(30):
        finish(mine, failed=i % 3 == 0)
    finish(theirs, failed=True)
    client.force_login(actors.member)
    response = client.get(HISTORY)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('class="lc-notification') == 25 and "secret-box" not in html
    assert reverse("instance_detail", args=[mine.pk]) in html
    second = client.get(HISTORY, {"page": 2}).content.decode()
    assert second.count('class="lc-notification') == 5
    failed = client.get(HISTORY, {"failed": "1"}).content.decode()
    assert failed.count('class="lc-notification') == 10
    assert 'data-state="succeeded"' not in failed
    assert client.get(HISTORY, {"page": "x"}).status_code == 200  # a bad page number: the first


def test_history_page_queries_are_constant(actors, lab, client):
    mine, _theirs = lab
    image = Image.objects.create(name="img", tenant=actors.tenant, status="active", size=1)

    def make_rows(n):
        for _ in range(n):
            finish(mine)
            finish(image, kind="image.process", failed=True)

    for role in ("member", "cloud_admin"):
        client.force_login(getattr(actors, role))
        # The request's own (session, user, active tenant), then the bell's count, the paginator's count, the rows,
        # the mark and one query per kind of target (instances, images): 10. The menu: the same without the
        # paginator's count and the page's tenancy context: 8.
        assert_constant_queries(make_rows, lambda: client.get(HISTORY), budget=10)
        assert_constant_queries(make_rows, lambda: client.get(MENU), budget=8)


def test_menu_fragment_and_mark_read(actors, lab, client):
    mine, theirs = lab
    finish(mine)
    finish(theirs)
    client.force_login(actors.member)
    html = client.get(MENU).content.decode()
    assert 'data-unread="1"' in html and "web" in html and "secret-box" not in html
    response = client.post(READ, HTTP_ACCEPT="application/json")
    assert response.json() == {"unread": 0}
    assert 'data-unread="0"' in client.get(MENU).content.decode()
    finish(mine)
    response = client.post(READ, {"next": reverse("instances")})
    assert response.status_code == 302 and response.url == reverse("instances")
    assert client.post(READ, {"next": "https://evil.example/"}).url == HISTORY
    assert client.get(READ).status_code == 405
    assert notifications.unread_count(user=actors.member) == 0


def test_history_page_in_chinese(actors, lab, client):
    ensure_compiled_messages()
    mine, _theirs = lab
    finish(mine, kind="instance.launch", message=gettext_noop("Instance is running."))
    client.force_login(actors.member)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    response = client.get(HISTORY)
    assert response.status_code == 200
    assert '<html lang="zh-hans">' in response.content.decode()
    assert "Instance is running." not in response.content.decode()


# ---------------------------------------------------------------- API


def test_api_lists_counts_and_marks_read(actors, lab):
    mine, theirs = lab
    done = finish(mine)
    failed = finish(mine, failed=True)
    finish(theirs)
    mine_id = mine.pk
    mine.delete()
    api = actors.client("member")
    body = api.get(API).json()
    assert body["count"] == 2
    first = body["results"][0]
    assert first["id"] == failed.pk and first["state"] == "failed" and first["unread"] is True
    assert first["message"] == "The image of this instance is gone or no longer active." and first["label"] == "Reboot"
    assert first["target_id"] == str(mine_id) and first["target_url"] is None  # the instance is gone
    assert [r["id"] for r in api.get(API, {"failed": "true"}).json()["results"]] == [failed.pk]
    assert [r["id"] for r in api.get(API, {"failed": "false"}).json()["results"]] == [failed.pk, done.pk]
    assert api.get(API + "unread/").json() == {"unread": 2}
    assert api.post(API + "read/").json() == {"unread": 0}
    assert api.get(API + "unread/").json() == {"unread": 0}
    assert api.get(API).json()["results"][0]["unread"] is False


def test_api_access(actors, lab):
    mine, _theirs = lab
    finish(mine)
    assert_access_matrix(
        actors,
        method="get",
        url=API,
        expected={"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )
    assert actors.client("outsider").get(API).json()["count"] == 0
    # A read-only token reads, but does not mark read.
    _token, secret = create_api_token(user=actors.member, name="ro", scope="read")
    api = actors.client("anonymous")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.get(API + "unread/").json() == {"unread": 1}
    assert api.post(API + "read/").status_code == 403


def test_api_list_queries_are_constant(actors, lab):
    mine, _theirs = lab

    def make_rows(n):
        for _ in range(n):
            finish(mine)

    api = actors.client("member")
    assert_constant_queries(make_rows, lambda: api.get(API, {"page_size": 200}), budget=6)
