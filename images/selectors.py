"""Read-side queries of the image catalogue."""

from __future__ import annotations

import math

from django.db.models import Count, Q, QuerySet, Sum

from images.models import Image
from portal.access import VIEW

GIB = 1024**3


def gib(size: int) -> int:
    """Bytes as whole GiB, rounded up: the unit of the image storage quota."""
    return math.ceil(size / GIB) if size > 0 else 0


def image_usage(tenant_ids: list[int]) -> dict[int, dict[str, int]]:
    """Quota usage derived from image rows (failed images hold nothing): one query for any number of tenants."""
    rows = (
        Image.objects.filter(tenant_id__in=tenant_ids)
        .exclude(status=Image.Status.FAILED)
        .values("tenant_id")
        .annotate(images=Count("id"), stored=Sum("size"))
        .order_by()
    )
    return {row["tenant_id"]: {"images": row["images"], "image_storage_gib": gib(row["stored"] or 0)} for row in rows}


def images_for(*, user, kind: str | None = None, launchable: bool = False) -> QuerySet[Image]:
    images = Image.objects.restrict(user, VIEW).select_related("tenant")
    if kind:
        images = images.filter(kind=kind)
    if launchable:
        images = images.filter(status=Image.Status.ACTIVE)
    return images


def visible_to_tenant(*, tenant_id: int) -> Q:
    return (
        Q(visibility=Image.Visibility.PUBLIC)
        | Q(tenant_id=tenant_id)
        | Q(visibility=Image.Visibility.SHARED, shared_with=tenant_id)
    )


def image_counts() -> list[dict]:
    """Images per kind and status, with their stored bytes: one query."""
    return list(
        Image.objects.values("kind", "status").annotate(n=Count("id"), size=Sum("size")).order_by("kind", "status")
    )
