"""The notification history: the finished operations a user may see, with a per-user "seen up to" marker.

A notification is not a row of its own: it is an ``Operation`` that ended (succeeded or failed) among those the
access gate shows the user (``Operation.objects.restrict``: their tenants' operations; cloud admins every one,
as their live socket's ``staff`` group does). What the user has read is one timestamp per user
(``NotificationMark.seen_until``): operations that finished after it are unread. Nothing is written when an
operation ends, a user joining a tenant sees its history at once, and losing a membership takes that tenant's
operations out of the history at the next request. Without a mark, what finished after the user's account was
made (``date_joined``) is unread; a tenant joined later brings what it did since the user's mark as unread.

Selectors (reads) and the one service (``mark_all_read``); every function runs a fixed number of queries,
whatever the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.apps import apps
from django.db.models import DateTimeField, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.functional import cached_property

from portal.access import VIEW
from vms.dashboard import OPERATION_TONES, TARGET_URL_NAMES, live_socket, operation_label, target_url_templates
from vms.models import NotificationMark, Operation

LATEST = 10  # what the bell's menu lists
UNREAD_LIMIT = 100  # the count stops here: the badge says "99+" beyond
FINISHED = (Operation.State.SUCCEEDED, Operation.State.FAILED)


@dataclass(frozen=True)
class Notification:
    """One finished operation as the history shows it, its texts in the active language."""

    id: int
    kind: str
    label: str  # what it did, as a noun ("Snapshot")
    tenant: str  # the tenant's name ("" for the infrastructure's operations)
    target_type: str
    target_id: str
    target: str  # the target's name when the operation ran
    target_url: str  # its page, "" when it is gone or the reader may not see it
    state: str
    state_display: str
    text: str  # the error of a failure, the last message of a success (translated)
    finished_at: datetime
    unread: bool

    @property
    def failed(self) -> bool:
        return self.state == Operation.State.FAILED

    @property
    def tone(self) -> str:
        return OPERATION_TONES.get(self.state, "secondary")

    @property
    def just_now(self) -> bool:
        """Finished within the last minute (said so, not "0 minutes ago")."""
        return timezone.now() - self.finished_at < timedelta(minutes=1)


def notifications_for(*, user, failed_only: bool = False) -> QuerySet[Operation]:
    """The finished operations ``user`` may see, newest first (the access gate decides which)."""
    operations = Operation.objects.restrict(user, VIEW).filter(state__in=FINISHED, finished_at__isnull=False)
    if failed_only:
        operations = operations.filter(state=Operation.State.FAILED)
    return operations.order_by("-finished_at", "-id")


def _joined(user) -> datetime:
    return getattr(user, "date_joined", None) or timezone.now()


def _seen_until_expression(user):
    mark = NotificationMark.objects.filter(user_id=user.pk).values("seen_until")[:1]
    return Coalesce(Subquery(mark), Value(_joined(user)), output_field=DateTimeField())


def seen_until(*, user) -> datetime:
    """Up to when ``user`` has read their notifications (when they joined, if they never marked them read)."""
    mark = NotificationMark.objects.filter(user_id=user.pk).values_list("seen_until", flat=True).first()
    return mark or _joined(user)


def unread_count(*, user) -> int:
    """How many notifications ``user`` has not read, up to ``UNREAD_LIMIT`` (one query)."""
    if user is None or not user.is_authenticated:
        return 0
    unread = notifications_for(user=user).filter(finished_at__gt=_seen_until_expression(user)).order_by()
    return unread[:UNREAD_LIMIT].count()


def badge(count: int) -> str:
    """The bell's badge: the count, "99+" from ``UNREAD_LIMIT`` on."""
    return f"{UNREAD_LIMIT - 1}+" if count >= UNREAD_LIMIT else str(count)


def describe(operations: list[Operation], *, user, seen: datetime) -> list[Notification]:
    """``operations`` as notifications: texts translated, and a link to each target that still exists and that
    ``user`` may see (one query per kind of target among them, through the access gate)."""
    wanted: dict[str, set[int]] = {}
    for operation in operations:
        if operation.target_type in TARGET_URL_NAMES and operation.target_id.isdigit():
            wanted.setdefault(operation.target_type, set()).add(int(operation.target_id))
    visible: dict[str, set[str]] = {}
    for target_type, ids in wanted.items():
        model = apps.get_model(target_type)
        found = model.objects.restrict(user, VIEW).filter(pk__in=ids).values_list("pk", flat=True).order_by()
        visible[target_type] = {str(pk) for pk in found}
    urls = target_url_templates()
    states = dict(Operation.State.choices)
    result = []
    for operation in operations:
        shown = operation.target_id in visible.get(operation.target_type, ())
        failed = operation.state == Operation.State.FAILED
        result.append(
            Notification(
                id=operation.pk,
                kind=operation.kind,
                label=operation_label(operation.kind),
                tenant=operation.tenant.name if operation.tenant_id else "",
                target_type=operation.target_type,
                target_id=operation.target_id,
                target=operation.target_repr,
                target_url=urls[operation.target_type].replace("{id}", operation.target_id) if shown else "",
                state=operation.state,
                state_display=str(states.get(operation.state, operation.state)),
                text=operation.error_text if failed else operation.message_text,
                finished_at=operation.finished_at,
                unread=operation.finished_at > seen,
            )
        )
    return result


def latest_notifications(*, user, limit: int = LATEST) -> list[Notification]:
    """The newest ``limit`` notifications of ``user`` (the bell's menu): at most four queries."""
    operations = list(notifications_for(user=user).select_related("tenant")[:limit])
    return describe(operations, user=user, seen=seen_until(user=user))


class Bell:
    """The top bar's bell, for templates: its count is read once, when a page shows it (one query)."""

    def __init__(self, user) -> None:
        self.user = user

    @cached_property
    def unread(self) -> int:
        return unread_count(user=self.user)

    @property
    def badge(self) -> str:
        return badge(self.unread)

    @property
    def socket(self) -> str:
        """The live socket its script listens on: every tenant of the user (cloud admins: everything)."""
        return live_socket()


def mark_all_read(*, user, until: datetime | None = None) -> NotificationMark:
    """Mark everything that finished up to ``until`` (now) read for ``user``; the mark never moves back.

    No audit event: this is the reader's own bookkeeping, not a change to anything of a tenant's.
    """
    until = until or timezone.now()
    mark, created = NotificationMark.objects.get_or_create(user_id=user.pk, defaults={"seen_until": until})
    if not created and mark.seen_until < until:
        NotificationMark.objects.filter(user_id=user.pk, seen_until__lt=until).update(seen_until=until)
        mark.seen_until = until
    return mark
