"""GET /metrics: portal and host figures in the Prometheus text format (docs/metrics.md).

A custom collector reads the selectors at scrape time; nothing is counted in process memory, so
every web process answers the same and a restart loses nothing. The number of queries does not
depend on the number of hosts, tenants or instances.

Access: a cloud admin (session cookie or ``Authorization: Bearer lc_…`` API token of a cloud
admin), or a scraper sending ``Authorization: Bearer <METRICS_TOKEN>``. No or a wrong credential
answers 401 (with ``WWW-Authenticate: Bearer``); a signed-in user or valid token of someone who is
not a cloud admin answers 403.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from images.selectors import image_counts
from portal.access import is_cloud_admin
from portal.selectors import quota_figures
from portal.services import authenticate_api_token
from vms.compute import Capability, host_can
from vms.selectors import host_figures, instance_state_counts, operation_state_counts

GIB = 1024**3


class PortalCollector:
    """Reads hosts, instances, operations, quotas and images when Prometheus scrapes."""

    def describe(self) -> list[Metric]:
        return []  # no describe at registration: collect() would run queries at import/registration time

    def collect(self) -> Iterator[Metric]:
        yield from self._hosts()
        yield from self._portal()

    def _hosts(self) -> Iterator[Metric]:
        labels = ["host"]
        up = GaugeMetricFamily("labcloud_host_up", "1 when the host is up (answering and enabled).", labels=labels)
        enabled = GaugeMetricFamily("labcloud_host_enabled", "1 when the host takes new instances.", labels=labels)
        cpus = GaugeMetricFamily("labcloud_host_cpus", "Physical CPUs of the host.", labels=labels)
        memory = GaugeMetricFamily("labcloud_host_memory_bytes", "RAM of the host.", labels=labels)
        free = GaugeMetricFamily("labcloud_host_memory_free_bytes", "Free RAM of the host.", labels=labels)
        pool = GaugeMetricFamily("labcloud_host_pool_capacity_bytes", "Size of the host's storage pool.", labels=labels)
        pool_free = GaugeMetricFamily(
            "labcloud_host_pool_available_bytes", "Free space in the host's storage pool.", labels=labels
        )
        seen = GaugeMetricFamily(
            "labcloud_host_last_seen_timestamp_seconds", "When the watcher last heard from the host.", labels=labels
        )
        instances = GaugeMetricFamily("labcloud_host_instances", "Instances placed on the host.", labels=labels)
        alloc = {
            name: GaugeMetricFamily(f"labcloud_host_allocated_{name}", text, labels=labels)
            for name, text in (
                ("vcpus", "vCPUs of the instances placed on the host."),
                ("ram_mib", "RAM (MiB) of the instances placed on the host."),
                ("disk_gib", "Disk (GiB) of the instances and extra disks placed on the host."),
            )
        }
        limit = {
            name: GaugeMetricFamily(f"labcloud_host_limit_{name}", text, labels=labels)
            for name, text in (
                ("vcpus", "vCPUs the scheduler may place on the host (CPUs × allocation ratio)."),
                ("ram_mib", "RAM (MiB) the scheduler may place on the host (minus reserved, × ratio)."),
                ("disk_gib", "Disk (GiB) the scheduler may place on the host (pool × ratio)."),
            )
        }
        for host, load in host_figures():
            name = [host.name]
            up.add_metric(name, 1 if host.state == "up" else 0)
            enabled.add_metric(name, 1 if host.enabled else 0)
            instances.add_metric(name, load.instances)
            for family, value in (
                (cpus, host.cpus),
                (memory, host.memory_mib * 1024**2 if host.memory_mib is not None else None),
                (free, host.free_memory_mib * 1024**2 if host.free_memory_mib is not None else None),
                (pool, host.pool_capacity),
                (pool_free, host.pool_available),
                (seen, host.last_seen.timestamp() if host.last_seen else None),
            ):
                if value is not None:
                    family.add_metric(name, value)
            alloc["vcpus"].add_metric(name, load.vcpus)
            alloc["ram_mib"].add_metric(name, load.ram_mib)
            alloc["disk_gib"].add_metric(name, load.disk_gib)
            if host_can(host, Capability.CAPACITY):  # where the backend places and limits, the portal knows no limit
                limit["vcpus"].add_metric(name, load.vcpu_limit)
                limit["ram_mib"].add_metric(name, load.ram_limit)
                limit["disk_gib"].add_metric(name, load.disk_limit)
        yield from (up, enabled, cpus, memory, free, pool, pool_free, seen, instances, *alloc.values(), *limit.values())

    def _portal(self) -> Iterator[Metric]:
        instances = GaugeMetricFamily(
            "labcloud_instances", "Instances per tenant and state.", labels=["tenant", "state"]
        )
        for row in instance_state_counts():
            instances.add_metric([row["tenant__slug"], row["state"]], row["n"])
        yield instances

        operations = GaugeMetricFamily(
            "labcloud_operations", "Operations (kept in the database) per kind and state.", labels=["kind", "state"]
        )
        for row in operation_state_counts():
            operations.add_metric([row["kind"], row["state"]], row["n"])
        yield operations

        used = GaugeMetricFamily(
            "labcloud_quota_used", "Quota in use per tenant and resource.", labels=["tenant", "resource"]
        )
        limit = GaugeMetricFamily(
            "labcloud_quota_limit",
            "Quota limit per tenant and resource (-1: unlimited).",
            labels=["tenant", "resource"],
        )
        for tenant, lines in quota_figures():
            for line in lines:
                used.add_metric([tenant.slug, line.resource], line.used)
                limit.add_metric([tenant.slug, line.resource], line.limit)
        yield used
        yield limit

        images = GaugeMetricFamily("labcloud_images", "Images per kind and status.", labels=["kind", "status"])
        image_bytes = GaugeMetricFamily(
            "labcloud_images_bytes", "Stored bytes of the images per kind and status.", labels=["kind", "status"]
        )
        for row in image_counts():
            images.add_metric([row["kind"], row["status"]], row["n"])
            image_bytes.add_metric([row["kind"], row["status"]], row["size"] or 0)
        yield images
        yield image_bytes


def exposition() -> bytes:
    """The whole scrape, from a registry made for this request (no process-wide state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PortalCollector())
    return generate_latest(registry)


def _bearer(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _sep, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _refusal(status: int, message: str) -> HttpResponse:
    response = HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def allowed(request: HttpRequest) -> int:
    """200 for a cloud admin or the scraper token, else the refusal's status (401 or 403)."""
    raw = _bearer(request)
    if raw is not None:
        token = settings.METRICS_TOKEN
        if token and hmac.compare_digest(raw.encode(), token.encode()):
            return 200
        api_token = authenticate_api_token(raw=raw)
        if api_token is None:
            return 401
        return 200 if is_cloud_admin(api_token.user) else 403
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return 401
    return 200 if is_cloud_admin(user) else 403


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    status = allowed(request)
    if status == 401:
        return _refusal(401, _("Authentication required: a cloud admin's session or token, or the metrics token."))
    if status == 403:
        return _refusal(403, _("Only cloud admins may read the metrics."))
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
