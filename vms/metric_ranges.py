"""The time ranges of the metrics graphs and the roll-up tier that serves each (docs/metrics.md).

``1h`` reads the raw points (one per ``METRICS_INTERVAL_SECONDS``, the newest ``METRICS_HISTORY``);
every longer range reads the roll-up rows of one tier, whose bucket length keeps it at 288–360 points.
The watcher folds each round's raw points into the current bucket of every tier directly
(``vms.watcher.metrics.roll_up``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.utils.translation import gettext_lazy as _


@dataclass(frozen=True)
class MetricRange:
    key: str
    label: object  # lazy translated text
    short: object  # the range button's text
    seconds: int
    tier: int | None  # bucket length in seconds; None = the raw points


RANGES: dict[str, MetricRange] = {
    r.key: r
    for r in (
        MetricRange("1h", _("1 hour"), _("1 h"), 3600, None),
        MetricRange("1d", _("1 day"), _("1 d"), 86400, 300),  # 288 buckets of 5 min
        MetricRange("1w", _("1 week"), _("1 w"), 7 * 86400, 1800),  # 336 buckets of 30 min
        MetricRange("1mo", _("1 month"), _("1 mo"), 30 * 86400, 7200),  # 360 buckets of 2 h
    )
}
DEFAULT_RANGE = "1h"
TIERS: tuple[int, ...] = tuple(r.tier for r in RANGES.values() if r.tier)
TIER_RANGE: dict[int, int] = {r.tier: r.seconds for r in RANGES.values() if r.tier}

# The columns a roll-up bucket averages, named as in the raw points (the watcher writes them, the selectors
# read them back under the raw points' names).
INSTANCE_AVERAGES: tuple[str, ...] = (
    "cpu_percent",
    "memory_used_mib",
    "memory_available_mib",
    "disk_read_bps",
    "disk_write_bps",
    "net_rx_bps",
    "net_tx_bps",
)
HOST_AVERAGES: tuple[str, ...] = ("cpu_percent", "memory_used_mib", "memory_total_mib", "instances")


def bucket_start(at: datetime, tier: int) -> datetime:
    """The start of the ``tier``-second bucket ``at`` falls in (buckets are aligned on the Unix epoch, UTC)."""
    seconds = int(at.timestamp()) // tier * tier
    return datetime.fromtimestamp(seconds, tz=UTC)
