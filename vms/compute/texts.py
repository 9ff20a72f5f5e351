"""Messages the worker stores untranslated (``gettext_noop``) in operations of moves between hosts; every reader
translates them in its own language (``Operation.message_text``/``error_text``, the live socket)."""

from __future__ import annotations

from django.utils.translation import gettext_noop

PREPARING = gettext_noop("Preparing the destination")
MIGRATING = gettext_noop("Migrating")
MIGRATED = gettext_noop("Migrated.")
CANCELLED = gettext_noop("The migration was cancelled; the instance runs where it was.")
TOO_LONG = gettext_noop("The migration took too long and was stopped; the instance runs where it was.")
MOVING_INSTANCES = gettext_noop("Moving the instances to other hosts")
SOME_STAYED = gettext_noop("Some instances stayed on the host; the details say which and why.")
ALL_MOVED = gettext_noop("Every instance moved; the host stays disabled.")
HOST_GONE = gettext_noop("The host no longer exists.")
EVACUATING = gettext_noop("Rebuilding the instances on other hosts")
ALL_EVACUATED = gettext_noop("Every instance was rebuilt on another host; the host stays disabled.")
# What an evacuated instance's member reads on its operation: (disks reused on shared storage, snapshots lost).
EVACUATED = {
    (True, False): gettext_noop("Its host went down: rebuilt on another host with its disks."),
    (True, True): gettext_noop(
        "Its host went down: rebuilt on another host with its disks; its snapshots were lost with the host."
    ),
    (False, False): gettext_noop(
        "Its host went down: rebuilt on another host from its image; what its disks held was lost."
    ),
    (False, True): gettext_noop(
        "Its host went down: rebuilt on another host from its image; what its disks held and its snapshots were lost."
    ),
}
WORKER_STOPPED = gettext_noop("The worker running this operation stopped; it can be started again.")
