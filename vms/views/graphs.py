"""What the metrics graphs of a page need (``static/vms/metrics.js``): the range in the URL, its points, texts."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils.translation import gettext as _

from vms.metric_ranges import DEFAULT_RANGE, RANGES, MetricRange


def page_range(request) -> MetricRange:
    """The range the page's ``?range=`` names; anything else (a stale or mistyped link) shows the hour."""
    return RANGES.get(request.GET.get("range") or DEFAULT_RANGE) or RANGES[DEFAULT_RANGE]


def graph_config(
    *, kind: str, owner_id: int, points: list[dict[str, Any]], metric_range: MetricRange, api: str, text: dict
) -> dict[str, Any]:
    """The json_script ``lc-metrics-data`` of an instance page (``kind`` "instance") or a host page ("host")."""
    return {
        "kind": kind,
        "id": owner_id,
        "points": points,
        "keep": settings.METRICS_HISTORY,
        "range": metric_range.key,
        "tier": metric_range.tier,
        "span": metric_range.seconds,
        "api": api,
        "ranges": [
            {"key": r.key, "label": str(r.label), "short": str(r.short), "tier": r.tier, "seconds": r.seconds}
            for r in RANGES.values()
        ],
        "text": {"cpu": _("CPU (%)"), "cpuPeak": _("Peak (%)"), "perSecond": _("/s"), **text},
    }
