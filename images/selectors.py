"""Read-side queries of the image catalogue."""

from __future__ import annotations

import math

from django.db.models import Count, Q, QuerySet, Sum

from images.models import Image, ImageShare
from portal.access import CHANGE, MAX_ID, VIEW, is_cloud_admin
from portal.models import Tenant

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


def launch_sources_for(*, user, tenant) -> QuerySet[Image]:
    """The images and ISOs ``user`` may launch in ``tenant`` now: active, and public, the tenant's own or shared
    with it and accepted."""
    usable = Image.objects.filter(visible_to_tenant(tenant_id=tenant.pk)).values("pk")
    return images_for(user=user, launchable=True).filter(pk__in=usable)


def may_download(*, user, image: Image) -> bool:
    """Whether ``user`` may download the image's file: cloud admins, and the owner tenant's members (the
    CHANGE audience) unless the image is not ``downloadable`` (a capture of an image they could not download).

    Tenants an image is shared with, and everyone for public images, may launch it but not download it.
    """
    if is_cloud_admin(user):
        return True
    return image.downloadable and Image.objects.restrict(user, CHANGE).filter(pk=image.pk).exists()


def tenant_may_download(*, tenant_id: int, image: Image) -> bool:
    """Whether the members of ``tenant_id`` may download ``image`` (what an image derived from it inherits)."""
    return image.downloadable and image.tenant_id == tenant_id


def visible_to_tenant(*, tenant_id: int) -> Q:
    """The images a tenant may launch: public ones, its own, and those shared with it that its admins accepted."""
    return (
        Q(visibility=Image.Visibility.PUBLIC)
        | Q(tenant_id=tenant_id)
        | Q(visibility=Image.Visibility.SHARED, shares__tenant_id=tenant_id, shares__status=ImageShare.Status.ACCEPTED)
    )


# ---------------------------------------------------------------- shares


def tenant_id_named(*, reference: str) -> int | None:
    """The tenant a share reference names (an id if it is all digits, else a slug), enabled or not, or None.

    One query of one shape whatever the reference, so how long it takes tells nothing about which tenants exist.
    """
    number = int(reference) if reference.isdigit() and int(reference) <= MAX_ID else 0
    found = list(Tenant.objects.filter(Q(pk=number) | Q(slug=reference)).values_list("pk", "slug")[:2])
    by_id = [pk for pk, _slug in found if pk == number]
    return (by_id or [pk for pk, _slug in found] or [None])[0]


def accepting_tenant_ids(*, images: QuerySet[Image]) -> QuerySet[ImageShare]:
    """Ids of the tenants that accepted one of ``images`` (a subquery): the ones a cloud copy may have as members."""
    return ImageShare.objects.filter(image__in=images, status=ImageShare.Status.ACCEPTED).values("tenant_id")


def shares_for(*, user) -> QuerySet[ImageShare]:
    """Shares ``user`` may see: offered to their tenants, or of their tenants' images (cloud admins: all)."""
    return ImageShare.objects.restrict(user, VIEW).select_related(
        "image", "image__tenant", "tenant", "requested_by", "decided_by"
    )


def incoming_shares(*, user, tenant: Tenant, status: str = ImageShare.Status.PENDING) -> QuerySet[ImageShare]:
    """Shares offered to ``tenant`` with this status, newest first (what its images page asks its admins about)."""
    return shares_for(user=user).filter(tenant=tenant, status=status).order_by("-created_at", "-id")


def accepted_share(*, user, image: Image, tenant: Tenant | None) -> ImageShare | None:
    """The accepted share that puts ``image`` in ``tenant``'s catalogue, if that is how the tenant has it."""
    if tenant is None or image.tenant_id == tenant.pk:
        return None
    return shares_for(user=user).filter(image=image, tenant=tenant, status=ImageShare.Status.ACCEPTED).first()


def image_counts() -> list[dict]:
    """Images per kind and status, with their stored bytes: one query."""
    return list(
        Image.objects.values("kind", "status").annotate(n=Count("id"), size=Sum("size")).order_by("kind", "status")
    )
