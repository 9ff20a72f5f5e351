"""The instance actions, in one registry: what each needs, what it is called, what it does to the power state.

Every reader takes its answer from here: the services' check (``check``), the instance page's
buttons and forms and the list's bulk actions (``offered``/``allowed``), the live redraw of the
page (the ``allowed_actions`` of each live update), the API's ``allowed_actions`` field, the labels
of tasks and operations. An action is *offered* when the instance's host has its capability (an
adopted domain folds in there, see ``vms.compute``) and it applies (finish install: only while
installing); it is *allowed* now when it is offered, no task runs, and the instance is in one of
its states. What is not offered is never shown; what is offered but not allowed is shown disabled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.utils.functional import Promise
from django.utils.translation import gettext_lazy, gettext_noop

from portal.services import ConflictError
from portal.texts import said
from vms.compute import Capability, compute_for, instance_capabilities
from vms.models import Host, Instance

S = Instance.State
P = Instance.PowerState


class Busy(ConflictError):
    """Refused because a task runs on the instance (the only refusal a stuck launch may override)."""


class HostUnavailable(ConflictError):
    """Refused because the instance's host is down (the watcher says so): nothing is queued until it is back."""

    code = "host_unavailable"
    title = gettext_lazy("Host unavailable")


@dataclass(frozen=True)
class Action:
    """One instance action.

    ``verb`` completes "Cannot … instance X" ("shut down"); ``progress`` is the task label while it runs
    ("Shutting down"); ``noun`` names the finished operation ("Shutdown of web-1 finished"); ``button``,
    ``icon``, ``tone`` and ``confirm`` draw its button; ``power`` is the desired power state it sets
    (None: unchanged); ``bulk``: offered on the instance list for several instances at once.
    """

    name: str
    capability: Capability | None
    states: frozenset[str]
    verb: Promise
    progress: Promise
    noun: Promise
    button: Promise
    icon: str = ""
    tone: str = "secondary"
    confirm: Promise | None = None
    power: str | None = None
    bulk: bool = False
    applies: Callable[[Instance], bool] = lambda instance: True
    busy_ok_in_error: bool = False  # may run while a task is recorded, once the instance is in error
    admin: bool = False  # cloud admins only (never among a member's allowed actions)
    host_down: bool = False  # for an instance whose host is down (evacuate); refused while the host answers


def _installing(instance: Instance) -> bool:
    return instance.installing


RUNNING_OR_OFF = frozenset({S.RUNNING, S.SHUTOFF})
RUNNING_OFF_OR_PAUSED = frozenset({S.RUNNING, S.SHUTOFF, S.PAUSED})

ACTIONS: dict[str, Action] = {
    action.name: action
    for action in (
        Action(
            "launch",
            capability=None,
            states=frozenset(),
            verb=gettext_lazy("launch"),
            progress=gettext_lazy("Launching"),
            noun=gettext_lazy("Launch"),
            button=gettext_lazy("Launch"),
        ),
        Action(
            "start",
            capability=Capability.POWER,
            states=frozenset({S.SHUTOFF, S.CRASHED}),
            verb=gettext_lazy("start"),
            progress=gettext_lazy("Starting"),
            noun=gettext_lazy("Start"),
            button=gettext_lazy("Start"),
            icon="play-fill",
            tone="success",
            power=P.RUNNING,
            bulk=True,
        ),
        Action(
            "shutdown",
            capability=Capability.POWER,
            states=frozenset({S.RUNNING, S.PAUSED}),
            verb=gettext_lazy("shut down"),
            progress=gettext_lazy("Shutting down"),
            noun=gettext_lazy("Shutdown"),
            button=gettext_lazy("Shut down"),
            icon="power",
            power=P.STOPPED,
            bulk=True,
        ),
        Action(
            "stop",
            capability=Capability.POWER,
            states=frozenset({S.RUNNING, S.PAUSED, S.CRASHED}),
            verb=gettext_lazy("power off"),
            progress=gettext_lazy("Powering off"),
            noun=gettext_lazy("Power-off"),
            button=gettext_lazy("Power off"),
            icon="plug",
            tone="warning",
            confirm=gettext_lazy("Power off “%(name)s” now? Unsaved data in the guest is lost."),
            power=P.STOPPED,
            bulk=True,
        ),
        Action(
            "reboot",
            capability=Capability.POWER,
            states=frozenset({S.RUNNING}),
            verb=gettext_lazy("reboot"),
            progress=gettext_lazy("Rebooting"),
            noun=gettext_lazy("Reboot"),
            button=gettext_lazy("Reboot"),
            icon="arrow-clockwise",
            power=P.RUNNING,
            bulk=True,
        ),
        Action(
            "reset",
            capability=Capability.POWER,
            states=frozenset({S.RUNNING, S.PAUSED}),
            verb=gettext_lazy("hard reset"),
            progress=gettext_lazy("Resetting"),
            noun=gettext_lazy("Hard reset"),
            button=gettext_lazy("Hard reset"),
            icon="lightning-charge",
            tone="warning",
            confirm=gettext_lazy("Reset “%(name)s” like the reset button of a PC? Unsaved data in the guest is lost."),
            power=P.RUNNING,
        ),
        Action(
            "pause",
            capability=Capability.PAUSE,
            states=frozenset({S.RUNNING}),
            verb=gettext_lazy("pause"),
            progress=gettext_lazy("Pausing"),
            noun=gettext_lazy("Pause"),
            button=gettext_lazy("Pause"),
            icon="pause-fill",
        ),
        Action(
            "resume",
            capability=Capability.PAUSE,
            states=frozenset({S.PAUSED}),
            verb=gettext_lazy("resume"),
            progress=gettext_lazy("Resuming"),
            noun=gettext_lazy("Resume"),
            button=gettext_lazy("Resume"),
            icon="play",
            tone="success",
            power=P.RUNNING,
        ),
        Action(
            "finish_install",
            capability=Capability.INSTALL_FROM_ISO,
            states=frozenset({S.RUNNING, S.SHUTOFF, S.PAUSED, S.CRASHED}),
            verb=gettext_lazy("finish install"),
            progress=gettext_lazy("Finishing the install"),
            noun=gettext_lazy("Install finish"),
            button=gettext_lazy("Finish install"),
            icon="check2-circle",
            tone="primary",
            confirm=gettext_lazy(
                "Finish the install of “%(name)s”? The ISO is ejected and the instance restarts from its disk."
            ),
            power=P.RUNNING,
            applies=_installing,
        ),
        Action(
            "resize",
            capability=Capability.RESIZE,
            states=frozenset({S.SHUTOFF}),
            verb=gettext_lazy("resize"),
            progress=gettext_lazy("Resizing"),
            noun=gettext_lazy("Resize"),
            button=gettext_lazy("Resize"),
            icon="arrows-angle-expand",
        ),
        Action(
            "set_resources",
            capability=Capability.LIVE_RESOURCES,
            states=RUNNING_OR_OFF,
            verb=gettext_lazy("change vCPUs/RAM"),
            progress=gettext_lazy("Changing vCPUs/RAM"),
            noun=gettext_lazy("vCPU/RAM change"),
            button=gettext_lazy("Apply"),
            icon="check-lg",
        ),
        Action(
            "attach_disk",
            capability=Capability.EXTRA_DISKS,
            states=RUNNING_OR_OFF,
            verb=gettext_lazy("attach a disk"),
            progress=gettext_lazy("Attaching a disk"),
            noun=gettext_lazy("Disk attachment"),
            button=gettext_lazy("Attach disk"),
            icon="plus-lg",
        ),
        Action(
            "detach_disk",
            capability=Capability.EXTRA_DISKS,
            states=RUNNING_OR_OFF,
            verb=gettext_lazy("detach a disk"),
            progress=gettext_lazy("Detaching a disk"),
            noun=gettext_lazy("Disk removal"),
            button=gettext_lazy("Detach"),
            icon="eject",
        ),
        Action(
            "snapshot_create",
            capability=Capability.SNAPSHOTS,
            states=RUNNING_OR_OFF,
            verb=gettext_lazy("take a snapshot"),
            progress=gettext_lazy("Taking a snapshot"),
            noun=gettext_lazy("Snapshot"),
            button=gettext_lazy("Take snapshot"),
            icon="camera",
        ),
        Action(
            "snapshot_revert",
            capability=Capability.SNAPSHOT_REVERT,
            states=RUNNING_OFF_OR_PAUSED,
            verb=gettext_lazy("revert to a snapshot"),
            progress=gettext_lazy("Reverting to a snapshot"),
            noun=gettext_lazy("Snapshot revert"),
            button=gettext_lazy("Revert"),
            icon="arrow-counterclockwise",
        ),
        Action(
            "snapshot_delete",
            capability=Capability.SNAPSHOTS,
            states=RUNNING_OFF_OR_PAUSED,
            verb=gettext_lazy("delete a snapshot"),
            progress=gettext_lazy("Deleting a snapshot"),
            noun=gettext_lazy("Snapshot deletion"),
            button=gettext_lazy("Delete snapshot"),
            icon="trash",
        ),
        Action(
            "capture",
            capability=Capability.CAPTURE,
            states=frozenset({S.SHUTOFF}),
            verb=gettext_lazy("capture to image"),
            progress=gettext_lazy("Capturing to an image"),
            noun=gettext_lazy("Capture"),
            button=gettext_lazy("Capture"),
            icon="disc",
        ),
        Action(
            "migrate",
            capability=Capability.MIGRATE,
            states=RUNNING_OR_OFF,
            verb=gettext_lazy("migrate"),
            progress=gettext_lazy("Migrating"),
            noun=gettext_lazy("Migration"),
            button=gettext_lazy("Migrate"),
            icon="arrow-left-right",
            admin=True,
        ),
        Action(
            "evacuate",
            capability=Capability.MIGRATE,
            states=frozenset(S.values) - {S.DELETING, S.BUILDING},
            verb=gettext_lazy("evacuate"),
            progress=gettext_lazy("Evacuating"),
            noun=gettext_lazy("Evacuation"),
            button=gettext_lazy("Evacuate"),
            icon="life-preserver",
            admin=True,
            host_down=True,
        ),
        Action(
            "delete",
            capability=None,
            states=frozenset(S.values),
            verb=gettext_lazy("delete"),
            progress=gettext_lazy("Deleting"),
            noun=gettext_lazy("Deletion"),
            button=gettext_lazy("Delete"),
            icon="trash",
            tone="danger",
            power=P.STOPPED,
            bulk=True,
            busy_ok_in_error=True,
        ),
    )
}
POWER_ACTIONS = tuple(a.name for a in ACTIONS.values() if a.capability in (Capability.POWER, Capability.PAUSE))
# The buttons of the instance page's power card (finish install only while installing).
POWER_CARD = (*POWER_ACTIONS, "finish_install")
BULK_ACTIONS = tuple(a.name for a in ACTIONS.values() if a.bulk)
REQUESTABLE = tuple(name for name, a in ACTIONS.items() if name != "launch" and not a.admin)
ADMIN_ACTIONS = tuple(name for name, a in ACTIONS.items() if a.admin)
# The distinct "applies now" tests of the registry: part of what decides an instance's actions.
APPLIES = tuple({a.applies: None for a in ACTIONS.values()})


def get(name: str) -> Action:
    return ACTIONS[name]


def task_label(task: str) -> str:
    action = ACTIONS.get(task)
    return str(action.progress) if action is not None else task


def offered(instance: Instance, name: str, capabilities: frozenset[Capability] | None = None) -> bool:
    """Whether the instance can ever do ``name`` where it is (its host's capabilities, and what applies now)."""
    action = ACTIONS[name]
    if name == "launch":
        return False
    if action.capability is not None:
        capabilities = instance_capabilities(instance) if capabilities is None else capabilities
        if action.capability not in capabilities:
            return False
    return action.applies(instance)


def refusal(instance: Instance, name: str) -> ConflictError | None:
    """Why the instance cannot do ``name`` now (a ConflictError to raise), or None when it can."""
    why = _refused(instance, name)
    return None if why is None else why()


def _refused(
    instance: Instance, name: str, capabilities: frozenset[Capability] | None = None
) -> Callable[[], ConflictError] | None:
    """None when the instance can do ``name`` now, else what builds the refusal: its message is only
    translated and formatted when someone reads it (a list page asks this of every row and action)."""
    action = ACTIONS[name]
    if instance.state == S.DELETING and (name != "delete" or instance.task):
        if name == "delete" and instance.task == "delete":
            return lambda: ConflictError(
                said(gettext_noop("Instance “%(name)s” is being deleted already."), name=instance.name)
            )
        return lambda: ConflictError(said(gettext_noop("Instance “%(name)s” is being deleted."), name=instance.name))
    if instance.task and not (action.busy_ok_in_error and instance.state == S.ERROR):
        return lambda: Busy(
            said(
                gettext_noop("Instance “%(name)s” is busy (%(task)s); try again when it has finished."),
                name=instance.name,
                task=ACTIONS[instance.task].verb if instance.task in ACTIONS else instance.task,  # lazy: translated
            )
        )
    if instance.state not in action.states:
        return lambda: ConflictError(
            said(
                gettext_noop("Cannot %(action)s instance “%(name)s” while it is %(state)s."),
                action=action.verb,
                name=instance.name,
                state=instance.get_state_display().lower(),
            )
        )
    if action.capability is None:
        return _host_down(instance)
    if instance.host_id is None:
        return lambda: ConflictError(said(gettext_noop("Instance “%(name)s” has no host."), name=instance.name))
    capabilities = instance_capabilities(instance) if capabilities is None else capabilities
    if action.capability not in capabilities:
        return lambda: ConflictError(compute_for(instance.host).missing_reason(instance, str(action.verb)))
    if not action.applies(instance):
        return lambda: ConflictError(
            said(gettext_noop("Instance “%(name)s” is not installing from an ISO."), name=instance.name)
        )
    if action.host_down:
        if instance.host.state != Host.State.DOWN:
            return lambda: ConflictError(
                said(gettext_noop("The host of instance “%(name)s” answers: migrate it instead."), name=instance.name)
            )
        return None
    return _host_down(instance)


def _host_down(instance: Instance) -> Callable[[], HostUnavailable] | None:
    if instance.host_id is not None and instance.host.state == Host.State.DOWN:
        return lambda: HostUnavailable(
            said(
                gettext_noop("The host of instance “%(name)s” is unavailable; try again when it is back."),
                name=instance.name,
            )
        )
    return None


def host_refusal(instance: Instance) -> HostUnavailable | None:
    """The instance's host is down: every action that talks to it waits until the watcher sees it answer again.

    Said to members without the host's name or address (the hosts page tells cloud admins why it is down).
    """
    why = _host_down(instance)
    return None if why is None else why()


def check(instance: Instance, name: str) -> None:
    """Raise the ConflictError that refuses ``name`` now, if any (the services call this under the row lock)."""
    problem = refusal(instance, name)
    if problem is not None:
        raise problem


def verb(name: str) -> str:
    action = ACTIONS.get(name)
    return str(action.verb) if action is not None else name


def allowed_actions(instance: Instance, *, memo: dict | None = None) -> list[str]:
    """The actions the instance accepts now (what its buttons enable), in the registry's order.

    ``memo`` (a dict kept for one page) answers rows alike from the first one's answer: the answer depends on
    nothing but what ``_answer_key`` reads (a 500-row API page asks this of every row)."""
    if memo is None:
        return _accepted(instance, REQUESTABLE)
    capabilities = instance_capabilities(instance)
    key = _answer_key(instance, capabilities)
    if key not in memo:
        memo[key] = _accepted(instance, REQUESTABLE, capabilities)
    return list(memo[key])


def _answer_key(instance: Instance, capabilities: frozenset[Capability]) -> tuple:
    """Everything ``offered`` and ``_refused`` read to decide (their messages read more, but only when shown)."""
    host_state = instance.host.state if instance.host_id is not None else None
    applies = tuple(applies(instance) for applies in APPLIES)
    return (instance.state, instance.task, host_state, instance.host_id is None, capabilities, applies)


def allowed_admin_actions(instance: Instance) -> list[str]:
    """The cloud admins' actions (migrate) the instance accepts now: for admins' pages and live updates only."""
    return _accepted(instance, ADMIN_ACTIONS)


def _accepted(
    instance: Instance, names: tuple[str, ...], capabilities: frozenset[Capability] | None = None
) -> list[str]:
    capabilities = instance_capabilities(instance) if capabilities is None else capabilities
    return [
        name
        for name in names
        if offered(instance, name, capabilities) and _refused(instance, name, capabilities) is None
    ]


def offered_actions(instance: Instance) -> list[str]:
    capabilities = instance_capabilities(instance)
    return [name for name in REQUESTABLE if offered(instance, name, capabilities)]
