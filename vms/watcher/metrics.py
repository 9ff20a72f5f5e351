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
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from portal.backends.base import DomainStats
from vms import realtime
from vms.compute import compute_for
from vms.models import Host, Instance, InstanceMetricSample
from vms.selectors import metric_point

MIB_IN_KIB = 1024


@dataclass(frozen=True)
class Counters:
    """The raw counters of one domain and when (``time.monotonic()``) they were read."""

    at: float
    stats: DomainStats


@dataclass(frozen=True)
class HostSampleResult:
    domains: int  # running domains the host reported
    stored: int  # points stored (instances seen in the previous round too)
    primed: int  # instances seen for the first time: their first point needs a second reading
    pruned: int  # old points deleted
    seconds: float  # wall time of the whole round for this host


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


def sample_host(
    *, host: Host, counters: dict[str, Counters], keep: int | None = None, at: datetime | None = None
) -> HostSampleResult:
    """One metrics round for one host: read every running domain's counters, store and publish the rates.

    ``counters`` is the caller's memory of the previous round for this host (domain UUID → Counters);
    it is updated in place (domains that stopped are forgotten). Raises ``BackendError`` when the
    host does not answer (the caller logs it and forgets the host's counters).
    """
    started = time.monotonic()
    keep = keep if keep is not None else settings.METRICS_HISTORY
    stats = compute_for(host).guest_stats(host)
    read_at = time.monotonic()
    at = at or timezone.now()
    current = {s.uuid.lower(): Counters(at=read_at, stats=s) for s in stats}
    previous = dict(counters)
    counters.clear()
    counters.update(current)

    instances = Instance.objects.filter(host=host, uuid__in=list(current)).only("pk", "uuid", "tenant_id")
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
    )
