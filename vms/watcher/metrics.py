"""Instance metrics: the watcher's sampling service (writes). Reads are in ``vms.selectors``.

Every ``METRICS_INTERVAL_SECONDS`` the watcher calls ``sample_host`` for each host it is connected
to. One driver call (the adapter's ``guest_stats``: libvirt's bulk domain stats) returns the raw
counters of every running domain of the host; the counters of the previous round are kept in the
watcher's memory (``counters``, keyed by domain UUID), and a point is stored for each instance whose
domain was also seen last round:

- ``cpu_percent``: CPU time used / (elapsed time × vCPUs) × 100, clamped to 0–100;
- ``memory_used_mib``: what the guest's balloon driver reports in use (available − unused) when it
  reports it, else the resident memory of the QEMU process on the host; ``memory_available_mib``:
  what the guest reports as available, else the memory it has (balloon size);
- disk read/write and network receive/transmit in bytes per second (summed over disks and NICs).

So the first round after the watcher starts (or after an instance starts) only primes the
counters, and the watcher then reads again after ``FIRST_POINT_SECONDS`` instead of a whole interval
(a new instance's graphs fill within seconds); a counter that went backwards (the domain was
restarted between two rounds) also gives no point. Each point is published live
(``{"type": "metrics", …}``) and the history is pruned to the newest ``METRICS_HISTORY`` points per
instance in the same round.

The same round keeps the longer history (``vms.metric_ranges``): the host's own CPU and memory (the
adapter's ``host_stats``, where the host has ``Capability.HOST_METRICS``) and its number of running
instances become a ``HostMetricSample``, and the round's new points are folded into the roll-up rows
of every tier (5 min, 30 min, 2 h: running averages and the CPU peak) by one ``INSERT … SELECT … ON
CONFLICT DO UPDATE`` per kind of owner, whatever the number of instances; roll-ups older than their
range are deleted (one query per kind).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F, Model, OuterRef, Q, Subquery, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from portal.backends.base import DomainStats, HostStats
from vms import realtime
from vms.compute import compute_for
from vms.compute.base import Capability
from vms.metric_ranges import HOST_AVERAGES, INSTANCE_AVERAGES, TIER_RANGE, TIERS, bucket_start
from vms.models import (
    Host,
    HostMetricRollup,
    HostMetricSample,
    Instance,
    InstanceMetricRollup,
    InstanceMetricSample,
)
from vms.selectors import metric_point

MIB_IN_KIB = 1024


@dataclass(frozen=True)
class Counters:
    """The raw counters of one domain and when (``time.monotonic()``) they were read."""

    at: float
    stats: DomainStats | HostStats


@dataclass(frozen=True)
class HostSampleResult:
    domains: int  # running domains the host reported
    stored: int  # points stored (instances seen in the previous round too)
    primed: int  # instances seen for the first time: their first point needs a second reading
    pruned: int  # old points deleted
    seconds: float  # wall time of the whole round for this host
    host_point: bool = False  # a point of the host's own history was stored
    host_reading: Counters | None = None  # the host's own reading: pass it back as ``host_previous`` next round


def _rate(current: int | None, previous: int | None, seconds: float) -> float | None:
    if current is None or previous is None or current < previous:
        return None
    return (current - previous) / seconds


def compute_point(*, previous: Counters, current: Counters) -> dict[str, Any] | None:
    """The rates between two readings of one domain; None when they cannot be compared (restart, no time)."""
    seconds = current.at - previous.at
    now, before = current.stats, previous.stats
    if seconds <= 0 or now.cpu_time_ns is None or before.cpu_time_ns is None or now.cpu_time_ns < before.cpu_time_ns:
        return None
    vcpus = now.vcpus or 1
    cpu = (now.cpu_time_ns - before.cpu_time_ns) / (seconds * 1e9 * vcpus) * 100
    if now.memory_available_kib is not None and now.memory_unused_kib is not None:
        used = (now.memory_available_kib - now.memory_unused_kib) / MIB_IN_KIB
        available = now.memory_available_kib / MIB_IN_KIB
    else:
        used = now.memory_rss_kib / MIB_IN_KIB if now.memory_rss_kib is not None else None
        available = now.memory_kib / MIB_IN_KIB if now.memory_kib is not None else None
    return {
        "interval": round(seconds, 3),
        "cpu_percent": round(min(100.0, max(0.0, cpu)), 2),
        "vcpus": vcpus,
        "memory_used_mib": round(used, 1) if used is not None else None,
        "memory_available_mib": round(available, 1) if available is not None else None,
        "disk_read_bps": _rate(now.disk_read_bytes, before.disk_read_bytes, seconds),
        "disk_write_bps": _rate(now.disk_write_bytes, before.disk_write_bytes, seconds),
        "net_rx_bps": _rate(now.net_rx_bytes, before.net_rx_bytes, seconds),
        "net_tx_bps": _rate(now.net_tx_bytes, before.net_tx_bytes, seconds),
    }


def prune_samples(*, instance_ids: list[int], keep: int) -> int:
    """Delete all but the newest ``keep`` points of each of these instances (two queries); how many went."""
    if not instance_ids:
        return 0
    ranked = (
        InstanceMetricSample.objects.filter(instance_id__in=instance_ids)
        .annotate(rank=Window(RowNumber(), partition_by=[F("instance_id")], order_by=[F("at").desc(), F("id").desc()]))
        .filter(rank__gt=keep)
        .values_list("pk", flat=True)
    )
    stale = list(ranked)
    if not stale:
        return 0
    return InstanceMetricSample.objects.filter(pk__in=stale).delete()[0]


def host_point(*, previous: Counters | None, current: Counters, instances: int) -> dict[str, Any] | None:
    """The host's point between two readings: CPU busy share, memory in use, running instances.

    None on the first reading (no interval yet). A figure the host does not report stays None.
    """
    if previous is None or current.at <= previous.at:
        return None
    now, before = current.stats, previous.stats
    cpu = None
    if None not in (now.cpu_busy_ns, now.cpu_total_ns, before.cpu_busy_ns, before.cpu_total_ns):
        total = now.cpu_total_ns - before.cpu_total_ns
        busy = now.cpu_busy_ns - before.cpu_busy_ns
        if total > 0 and busy >= 0:
            cpu = round(min(100.0, max(0.0, busy / total * 100)), 2)
    used = total_mib = None
    if now.memory_total_kib is not None and now.memory_free_kib is not None:
        total_mib = round(now.memory_total_kib / MIB_IN_KIB, 1)
        used = round(max(0, now.memory_total_kib - now.memory_free_kib) / MIB_IN_KIB, 1)
    return {
        "interval": round(current.at - previous.at, 3),
        "cpu_percent": cpu,
        "memory_used_mib": used,
        "memory_total_mib": total_mib,
        "instances": instances,
    }


def prune_host_samples(*, host: Host, keep: int) -> int:
    """Delete all but the newest ``keep`` points of the host's own history (one query)."""
    newest = HostMetricSample.objects.filter(host_id=OuterRef("host_id")).order_by("-at", "-id").values("at")
    cutoff = Subquery(newest[keep - 1 : keep])
    return HostMetricSample.objects.filter(host=host, at__lt=cutoff).delete()[0]


# ---------------------------------------------------------------- roll-ups


@dataclass(frozen=True)
class Rollup:
    """How one kind of raw point folds into its roll-up rows."""

    raw: type[Model]
    rollup: type[Model]
    owner: str  # the foreign key both have: "instance" or "host"
    averages: tuple[str, ...]  # columns of both, averaged over the bucket
    peaks: tuple[tuple[str, str], ...]  # (roll-up column, raw column): the bucket's maximum


INSTANCE_ROLLUP = Rollup(
    raw=InstanceMetricSample,
    rollup=InstanceMetricRollup,
    owner="instance",
    averages=INSTANCE_AVERAGES,
    peaks=(("cpu_max_percent", "cpu_percent"), ("vcpus", "vcpus")),
)
HOST_ROLLUP = Rollup(
    raw=HostMetricSample,
    rollup=HostMetricRollup,
    owner="host",
    averages=HOST_AVERAGES,
    peaks=(("cpu_max_percent", "cpu_percent"),),
)


def roll_up(*, spec: Rollup, host: Host, at: datetime) -> None:
    """Fold the raw points the round stored at ``at`` for owners on ``host`` into every tier (one query).

    ``INSERT INTO rollup SELECT … FROM raw, (the round's buckets) WHERE … ON CONFLICT DO UPDATE``: a new
    bucket starts from the point; an existing one gets the running average (a None value leaves the
    average as it was) and the larger peak. The SQL is the one SQLite and PostgreSQL share.
    """
    q = connection.ops.quote_name
    raw, rollup = spec.raw._meta, spec.rollup._meta
    owner = q(raw.get_field(spec.owner).column)
    target = q(rollup.db_table)
    if spec.owner == "host":
        scope, scope_params = f"r.{owner} = %s", [host.pk]
    else:
        instances = Instance._meta
        scope = (
            f"r.{owner} IN (SELECT {q(instances.pk.column)} FROM {q(instances.db_table)} "  # noqa: S608 - quoted model names
            f"WHERE {q(instances.get_field('host').column)} = %s)"
        )
        scope_params = [host.pk]
    buckets = " UNION ALL ".join("SELECT %s AS tier, %s AS bucket" for _ in TIERS)
    bucket_params: list[Any] = []
    for tier in TIERS:
        bucket_params += [tier, connection.ops.adapt_datetimefield_value(bucket_start(at, tier))]
    columns = [owner, "tier", "bucket", "samples", *map(q, spec.averages), *(q(col) for col, _src in spec.peaks)]
    # Grouped, so that one owner never proposes the same bucket twice (PostgreSQL refuses that in one upsert).
    selected = [
        f"r.{owner}",
        "b.tier",
        "b.bucket",
        "COUNT(*)",
        *(f"AVG(r.{q(col)})" for col in spec.averages),
        *(f"MAX(r.{q(src)})" for _col, src in spec.peaks),
    ]
    updates = [f"samples = {target}.samples + excluded.samples"]
    for col in map(q, spec.averages):
        updates.append(
            f"{col} = CASE WHEN excluded.{col} IS NULL THEN {target}.{col} "
            f"WHEN {target}.{col} IS NULL THEN excluded.{col} "
            f"ELSE ({target}.{col} * {target}.samples + excluded.{col} * excluded.samples) "
            f"/ ({target}.samples + excluded.samples) END"
        )
    for col in (q(col) for col, _src in spec.peaks):
        updates.append(
            f"{col} = CASE WHEN {target}.{col} IS NULL OR excluded.{col} > {target}.{col} "
            f"THEN excluded.{col} ELSE {target}.{col} END"
        )
    sql = (
        f"INSERT INTO {target} ({', '.join(columns)}) "  # noqa: S608 - quoted model names; values are parameters
        f"SELECT {', '.join(selected)} FROM {q(raw.db_table)} r, ({buckets}) b "
        f"WHERE {scope} AND r.{q(raw.get_field('at').column)} = %s "
        f"GROUP BY r.{owner}, b.tier, b.bucket "
        f"ON CONFLICT ({owner}, tier, bucket) DO UPDATE SET {', '.join(updates)}"
    )
    params = [*bucket_params, *scope_params, connection.ops.adapt_datetimefield_value(at)]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def prune_rollups(*, spec: Rollup, now: datetime) -> int:
    """Delete the roll-up rows older than their tier's range, of every owner (one query)."""
    old = Q()
    for tier in TIERS:
        old |= Q(tier=tier, bucket__lt=now - timedelta(seconds=TIER_RANGE[tier]))
    return spec.rollup.objects.filter(old).delete()[0]


# ---------------------------------------------------------------- the round


def sample_host(
    *,
    host: Host,
    counters: dict[str, Counters],
    host_previous: Counters | None = None,
    keep: int | None = None,
    at: datetime | None = None,
) -> HostSampleResult:
    """One metrics round for one host: read every running domain's counters, store and publish the rates.

    ``counters`` is the caller's memory of the previous round for this host (domain UUID → Counters); it
    is updated in place (domains that stopped are forgotten). ``host_previous`` is the host's own
    reading of the previous round (the last result's ``host_reading``). Raises ``BackendError`` when the
    host does not answer (the caller logs it and forgets the host's counters and reading).
    """
    started = time.monotonic()
    adapter = compute_for(host)
    stats = adapter.guest_stats(host)
    own = adapter.host_stats(host) if Capability.HOST_METRICS in adapter.host_capabilities(host) else None
    return record_round(
        host=host,
        stats=stats,
        host_stats=own,
        counters=counters,
        host_previous=host_previous,
        read_at=time.monotonic(),
        keep=keep,
        at=at,
        started=started,
    )


def record_round(
    *,
    host: Host,
    stats: list[DomainStats],
    host_stats: HostStats | None,
    counters: dict[str, Counters],
    read_at: float,
    host_previous: Counters | None = None,
    keep: int | None = None,
    at: datetime | None = None,
    started: float | None = None,
) -> HostSampleResult:
    """Store one round's readings of a host (``sample_host`` without the backend calls).

    A bounded number of queries whatever the number of instances: the instance rows, the points, the
    prune of the raw history, the host's point and its prune, one roll-up query per kind of owner and
    one prune of the roll-ups per kind.
    """
    started = started if started is not None else time.monotonic()
    keep = keep if keep is not None else settings.METRICS_HISTORY
    at = at or timezone.now()
    current: dict[str, Counters] = {s.uuid.lower(): Counters(at=read_at, stats=s) for s in stats}
    previous = dict(counters)
    counters.clear()
    counters.update(current)
    host_reading = Counters(at=read_at, stats=host_stats) if host_stats is not None else None

    instances = list(Instance.objects.filter(host=host, uuid__in=list(current)).only("pk", "uuid", "tenant_id"))
    samples, owners, primed = [], {}, 0
    for instance in instances:
        key = str(instance.uuid)
        before = previous.get(key)
        if before is None:
            primed += 1
            continue
        point = compute_point(previous=before, current=current[key])
        if point is None:
            continue
        samples.append(InstanceMetricSample(instance_id=instance.pk, at=at, **point))
        owners[instance.pk] = instance.tenant_id
    if samples:
        InstanceMetricSample.objects.bulk_create(samples)
    pruned = prune_samples(instance_ids=list(owners), keep=keep)
    own = None
    if host_reading is not None:
        own = host_point(previous=host_previous, current=host_reading, instances=len(instances))
        if own is not None:
            HostMetricSample.objects.create(host=host, at=at, **own)
            pruned += prune_host_samples(host=host, keep=keep)
    if samples:
        roll_up(spec=INSTANCE_ROLLUP, host=host, at=at)
    if own is not None:
        roll_up(spec=HOST_ROLLUP, host=host, at=at)
    if samples or own is not None:
        prune_rollups(spec=INSTANCE_ROLLUP, now=at)
        prune_rollups(spec=HOST_ROLLUP, now=at)
    for sample in samples:
        realtime.metrics_sampled(
            tenant_id=owners[sample.instance_id], instance_id=sample.instance_id, point=metric_point(sample)
        )
    return HostSampleResult(
        domains=len(current),
        stored=len(samples),
        primed=primed,
        pruned=pruned,
        seconds=time.monotonic() - started,
        host_point=own is not None,
        host_reading=host_reading,
    )
