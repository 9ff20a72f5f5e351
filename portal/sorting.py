"""Column sorting of the dashboard's lists: ``?sort=<column>`` or ``?sort=-<column>``.

A view names its sortable columns and the fields each orders by (with a tie-breaker, so pages are
stable); anything else in ``sort`` keeps the list's default order. The template reads, per column,
the ``sort`` value its header link sets (ascending first, then descending), its ``aria-sort`` and
its arrow (``templates/portal/_sort_th.html``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import QuerySet


@dataclass(frozen=True)
class SortColumn:
    param: str  # the ``sort`` value this column's header link sets
    aria: str  # its aria-sort: ascending, descending or none
    icon: str  # a Bootstrap icon: the current direction, or a neutral one


@dataclass(frozen=True)
class Sorting:
    key: str = ""  # the column the list is sorted by; "" for its default order
    descending: bool = False
    columns: dict[str, SortColumn] = field(default_factory=dict)


def sort_by(queryset: QuerySet, value: str, columns: dict[str, tuple[str, ...]]) -> tuple[QuerySet, Sorting]:
    """``queryset`` ordered as ``value`` asks (a key of ``columns``, "-" in front for descending), and what the
    headers show."""
    descending = value.startswith("-")
    key = value.removeprefix("-")
    if key not in columns:
        key, descending = "", False
    else:
        queryset = queryset.order_by(*(f"-{f}" if descending else f for f in columns[key]))
    links = {}
    for name in columns:
        current = name == key
        if current and not descending:
            links[name] = SortColumn(param=f"-{name}", aria="ascending", icon="bi-caret-up-fill")
        elif current:
            links[name] = SortColumn(param=name, aria="descending", icon="bi-caret-down-fill")
        else:
            links[name] = SortColumn(param=name, aria="none", icon="bi-chevron-expand")
    return queryset, Sorting(key=key, descending=descending, columns=links)
