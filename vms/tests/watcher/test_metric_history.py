"""The longer metrics history: roll-ups per bucket and tier, their pruning, host points, the reads.

Rounds are stored with ``record_round`` and readings made of real ``DomainStats``/``HostStats`` values
at explicit times (no sleeps, no libvirt counters needed); the driver's host statistics are read from
``test:///default`` and, for memory (which the test driver does not report), from the real host.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from portal.backends.base import DomainStats, HostStats
from portal.backends.libvirt.driver import LibvirtDriver
from portal.factories import make_host, make_instance
from portal.testing import assert_access_matrix, assert_constant_queries, count_queries
from vms.metric_ranges import RANGES, bucket_start
from vms.models import Flavor, HostMetricRollup, HostMetricSample, InstanceMetricRollup, InstanceMetricSample
from vms.selectors import host_metric_points_for, metric_points_for
from vms.tests.conftest import TEST_URI
from vms.watcher.metrics import Counters, record_round, sample_host

T0 = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)  # a Monday, 12:00: the start of a bucket of every tier
GIB_KIB = 1024 * 1024


@pytest.fixture
def flavor(db):
    return Flavor.objects.create(name="lctest.history", vcpus=1, ram_mib=128, disk_gib=1)


def guest(uuid, *, cpu_s: float, vcpus: int = 1) -> DomainStats:
    return DomainStats(
        uuid=str(uuid),
        name=f"lctest-{uuid}",
        state="running",
        vcpus=vcpus,
        cpu_time_ns=int(cpu_s * 1e9),
        memory_kib=262144,
        memory_rss_kib=131072,
        disk_read_bytes=0,
        disk_write_bytes=0,
        net_rx_bytes=0,
        net_tx_bytes=0,
    )


def host_reading(*, busy_s: float, total_s: float) -> HostStats:
    return HostStats(
        cpu_busy_ns=int(busy_s * 1e9),
        cpu_total_ns=int(total_s * 1e9),
        memory_total_kib=16 * GIB_KIB,
        memory_free_kib=12 * GIB_KIB,
    )


class Rounds:
    """A host's rounds every ``step`` seconds of explicit time: each instance's CPU counter grows by the share
    given for the round, the host's busy time by twice that (of its 4 CPUs). The first round primes."""

    def __init__(self, host, instances, *, start: datetime = T0, step: int = 15) -> None:
        self.host, self.instances, self.step = host, instances, step
        self.counters: dict[str, Counters] = {}
        self.host_previous: Counters | None = None
        self.cpu = {str(i.uuid): 0.0 for i in instances}
        self.busy = self.total = self.clock = 0.0
        self.at = start
        self._record()

    def _record(self) -> None:
        result = record_round(
            host=self.host,
            stats=[guest(u, cpu_s=c) for u, c in self.cpu.items()],
            host_stats=host_reading(busy_s=self.busy, total_s=self.total),
            counters=self.counters,
            host_previous=self.host_previous,
            read_at=self.clock,
            at=self.at,
        )
        self.host_previous = result.host_reading

    def run(self, shares: list[float], *, at: datetime | None = None) -> None:
        """One round per share; ``at``: the first of them at that time (the watcher was off meanwhile)."""
        for n, share in enumerate(shares):
            self.clock += self.step
            self.at = at if (at is not None and n == 0) else self.at + timedelta(seconds=self.step)
            for key in self.cpu:
                self.cpu[key] += self.step * share / 100
            self.busy += self.step * 4 * min(100, 2 * share) / 100
            self.total += self.step * 4
            self._record()


def run_rounds(host, instances, shares: list[float]) -> Rounds:
    rounds = Rounds(host, instances)
    rounds.run(shares)
    return rounds


def test_bucket_start_is_aligned_per_tier():
    at = datetime(2026, 3, 2, 13, 47, 31, tzinfo=UTC)
    assert bucket_start(at, 300) == datetime(2026, 3, 2, 13, 45, tzinfo=UTC)
    assert bucket_start(at, 1800) == datetime(2026, 3, 2, 13, 30, tzinfo=UTC)
    assert bucket_start(at, 7200) == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    # every longer range reads a bounded number of buckets
    assert [r.seconds // r.tier for r in RANGES.values() if r.tier] == [288, 336, 360]


def test_rollups_average_and_keep_the_peak(flavor, actors):
    host = make_host()
    instance = make_instance(actors.tenant, flavor, host)
    # 12:00:15 … 12:05:00 (20 points) fall in the 12:00 bucket of 5 min, 12:05:15 in the next one.
    shares = [10.0] * 10 + [30.0] * 9 + [50.0] + [20.0]
    run_rounds(host, [instance], shares)
    assert InstanceMetricSample.objects.filter(instance=instance).count() == 21
    five = {r.bucket: r for r in InstanceMetricRollup.objects.filter(instance=instance, tier=300)}
    # The point stored at 12:05:00 belongs to the 12:05 bucket (buckets are [start, start + 5 min)).
    first, second = five[T0], five[T0 + timedelta(minutes=5)]
    assert first.samples == 19
    assert first.cpu_percent == pytest.approx((10 * 10 + 30 * 9) / 19)
    assert first.cpu_max_percent == pytest.approx(30.0)
    assert second.samples == 2 and second.cpu_percent == pytest.approx(35.0) and second.cpu_max_percent == 50.0
    assert first.memory_used_mib == pytest.approx(128.0) and first.vcpus == 1
    for tier in (1800, 7200):
        row = InstanceMetricRollup.objects.get(instance=instance, tier=tier)
        assert row.bucket == T0 and row.samples == 21
        assert row.cpu_percent == pytest.approx(sum(shares) / 21)
        assert row.cpu_max_percent == pytest.approx(50.0)
    # The host's own points: CPU twice the guest's share of the host's 4 CPUs, memory, running instances.
    host_rows = {r.tier: r for r in HostMetricRollup.objects.filter(host=host, bucket=T0)}
    assert host_rows[7200].samples == 21
    assert host_rows[7200].cpu_percent == pytest.approx(2 * sum(shares) / 21)
    assert host_rows[7200].cpu_max_percent == pytest.approx(100.0)
    assert host_rows[7200].memory_used_mib == pytest.approx(4096.0)
    assert host_rows[7200].memory_total_mib == pytest.approx(16384.0)
    assert host_rows[7200].instances == pytest.approx(1.0)


def test_raw_history_stays_bounded_and_rollups_are_pruned_to_their_range(flavor, actors, settings):
    settings.METRICS_HISTORY = 5
    host = make_host()
    instance = make_instance(actors.tenant, flavor, host)
    rounds = run_rounds(host, [instance], [5.0, 5.0])
    assert InstanceMetricRollup.objects.filter(instance=instance).count() == 3  # one bucket per tier
    later = T0 + timedelta(days=1, minutes=10)  # past the 5-min tier's range (1 day), within the others'
    rounds.run([7.0], at=later)
    tiers = sorted(InstanceMetricRollup.objects.filter(instance=instance).values_list("tier", "bucket"))
    assert (300, T0) not in tiers and (300, bucket_start(later, 300)) in tiers
    assert (1800, T0) in tiers and (7200, T0) in tiers
    much_later = T0 + timedelta(days=31)
    rounds.run([7.0], at=much_later)
    buckets = set(InstanceMetricRollup.objects.filter(instance=instance).values_list("bucket", flat=True))
    assert T0 not in buckets, "a month later even the 2-hour buckets of the first day are gone"
    assert not HostMetricRollup.objects.filter(bucket=T0).exists()
    # Raw points: the newest METRICS_HISTORY of the instance and of the host.
    assert InstanceMetricSample.objects.filter(instance=instance).count() == 4
    assert HostMetricSample.objects.filter(host=host).count() == 4
    rounds.run([1.0, 2.0, 3.0])
    assert InstanceMetricSample.objects.filter(instance=instance).count() == 5
    assert HostMetricSample.objects.filter(host=host).count() == 5


def test_a_round_costs_the_same_queries_for_3_or_40_instances(flavor, actors):
    counts = {}
    for n in (3, 40):
        host = make_host()
        instances = [make_instance(actors.tenant, flavor, host) for _ in range(n)]
        rounds = run_rounds(host, instances, [10.0])  # primed, one point each
        counts[n] = count_queries(lambda r=rounds: r.run([20.0]))
        assert InstanceMetricSample.objects.filter(instance__host=host).count() == 2 * n
        assert InstanceMetricRollup.objects.filter(instance__host=host, tier=300).count() == n
    # instances, points, prune (rank + delete), host point and its prune, two roll-ups, two roll-up prunes
    assert counts[3] == counts[40] <= 10, counts


def test_reading_a_range_is_one_query_whatever_its_length(flavor, actors):
    host = make_host()
    instance = make_instance(actors.tenant, flavor, host)
    run_rounds(host, [instance], [10.0] * 30)
    member, admin = actors.member, actors.cloud_admin
    now = T0 + timedelta(minutes=8)
    day = metric_points_for(user=member, instance=instance, metric_range=RANGES["1d"], now=now)
    assert [p["samples"] for p in day] == [19, 11]
    assert day[0]["at"] == T0.isoformat() and day[0]["interval"] == 300.0 and day[0]["cpu_max_percent"] == 10.0
    assert len(metric_points_for(user=member, instance=instance, metric_range=RANGES["1w"], now=now)) == 1
    assert (
        metric_points_for(user=member, instance=instance, metric_range=RANGES["1d"], now=now + timedelta(days=2)) == []
    )
    assert len(metric_points_for(user=member, instance=instance, metric_range=RANGES["1h"], now=now)) == 30
    assert metric_points_for(user=actors.outsider, instance=instance, metric_range=RANGES["1d"], now=now) == []
    for key in RANGES:
        assert (
            count_queries(
                lambda k=key: metric_points_for(user=member, instance=instance, metric_range=RANGES[k], now=now)
            )
            == 1
        )
        assert (
            count_queries(lambda k=key: host_metric_points_for(user=admin, host=host, metric_range=RANGES[k], now=now))
            == 1
        )
    hour = host_metric_points_for(user=admin, host=host, metric_range=RANGES["1h"], now=now)
    assert len(hour) == 30 and hour[-1]["instances"] == 1 and hour[-1]["cpu_percent"] == pytest.approx(20.0)
    assert host_metric_points_for(user=member, host=host, metric_range=RANGES["1mo"], now=now) == []  # admins only


# ---------------------------------------------------------------- the driver and a real round


def test_driver_host_stats_on_the_test_driver_and_the_real_host():
    stats = LibvirtDriver(TEST_URI).host_stats()
    assert stats.cpu_total_ns and stats.cpu_busy_ns is not None  # the test driver has CPU statistics…
    assert stats.memory_total_kib is None and stats.memory_free_kib is None  # …but no memory statistics
    real = LibvirtDriver("qemu:///system").host_stats()  # reading the real host's figures is harmless
    assert real.memory_total_kib and 0 < real.memory_free_kib <= real.memory_total_kib
    assert 0 <= real.cpu_busy_ns <= real.cpu_total_ns


def test_sample_host_stores_a_host_point_on_the_second_round(flavor, actors, test_driver):
    host = make_host(uri=TEST_URI)
    counters: dict[str, Counters] = {}
    first = sample_host(host=host, counters=counters, at=T0)
    assert first.host_reading is not None and not first.host_point
    second = sample_host(host=host, counters=counters, host_previous=first.host_reading, at=T0 + timedelta(seconds=15))
    assert second.host_point
    point = HostMetricSample.objects.get(host=host)
    assert point.memory_total_mib is None  # not reported by test:///default: no made-up figure
    assert HostMetricRollup.objects.filter(host=host).count() == 3


# ---------------------------------------------------------------- the API


def test_metrics_api_ranges_and_a_bad_range(flavor, actors):
    host = make_host()
    instance = make_instance(actors.tenant, flavor, host)
    run_rounds(host, [instance], [10.0] * 3)
    url = f"/api/v1/instances/{instance.pk}/metrics/"
    client = actors.client("member")
    # The rounds are at T0 (in the past): the hour gives the raw points, longer ranges from now on have none.
    assert len(client.get(url).json()) == 3
    assert len(client.get(url + "?range=1h").json()) == 3
    InstanceMetricRollup.objects.update(bucket=bucket_start(datetime.now(tz=UTC), 300))
    for key in ("1d", "1w", "1mo"):
        body = client.get(url + f"?range={key}").json()
        assert len(body) == 1 and body[0]["samples"] == 3 and body[0]["cpu_max_percent"] == pytest.approx(10.0), key
    for bad in ("2h", "", "1H", "x" * 300):
        response = client.get(url, {"range": bad})
        assert response.status_code == 400, bad
        assert response["Content-Type"].startswith("application/problem+json")
        assert "range" in response.json()["detail"] or "range" in str(response.json()), response.json()
    for key in ("1h", "1d"):
        assert_access_matrix(
            actors,
            method="GET",
            url=f"{url}?range={key}",
            expected={"anonymous": 401, "outsider": 404, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
        )
    other = make_instance(actors.other_tenant, flavor, host)
    assert client.get(f"/api/v1/instances/{other.pk}/metrics/?range=1d").status_code == 404


def test_host_metrics_api(flavor, actors):
    host = make_host()
    run_rounds(host, [make_instance(actors.tenant, flavor, host)], [10.0, 20.0])
    url = f"/api/v1/hosts/{host.pk}/metrics/"
    admin = actors.client("cloud_admin")
    body = admin.get(url).json()
    assert [p["cpu_percent"] for p in body] == [pytest.approx(20.0), pytest.approx(40.0)]
    assert body[0]["memory_used_mib"] == 4096.0 and body[0]["memory_total_mib"] == 16384.0 and body[0]["instances"] == 1
    assert admin.get(url + "?range=1mo").status_code == 200
    assert admin.get(url + "?range=1y").status_code == 400
    assert_access_matrix(
        actors,
        method="GET",
        url=url,
        expected={"anonymous": 401, "outsider": 404, "member": 404, "tenant_admin": 404, "cloud_admin": 200},
    )


def test_metrics_api_reads_are_constant_whatever_the_history(flavor, actors):
    host = make_host()
    instance = make_instance(actors.tenant, flavor, host)
    rounds = Rounds(host, [instance], start=bucket_start(datetime.now(tz=UTC) - timedelta(minutes=30), 300))
    client, admin = actors.client("member"), actors.client("cloud_admin")

    def requests():
        for key in RANGES:
            assert client.get(f"/api/v1/instances/{instance.pk}/metrics/?range={key}").status_code == 200
            assert admin.get(f"/api/v1/hosts/{host.pk}/metrics/?range={key}").status_code == 200

    def more(n):  # n rounds: new buckets of 5 min, and more points in every bucket
        rounds.run([5.0] * n)

    assert_constant_queries(more, requests, budget=40)
    assert (
        len(client.get(f"/api/v1/instances/{instance.pk}/metrics/?range=1d").json()) == 2
    )  # 22 rounds of 15 s: two buckets of 5 min
