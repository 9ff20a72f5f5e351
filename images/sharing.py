"""Sharing images with other tenants (keyword-only, typed): an owner offers, the receiving tenant's admins answer.

As Glance's image members: a share is pending until an admin of the receiving tenant accepts it; until
then that tenant neither sees nor launches the image. Every name an owner types gets the same answer,
so sharing tells nobody which tenants exist (docs/images.md, "Sharing with other tenants").
"""

from __future__ import annotations

import re

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from images.models import Image, ImageShare
from images.selectors import tenant_id_named
from portal.services import ConflictError, ServiceError, record_audit

SHARE_REFERENCE = re.compile(r"[a-z0-9_-]{1,100}")


def share_reference(value: object) -> str:
    """A tenant as the owner names it, normalised: an id (digits, no leading zeros) or a slug (lower case)."""
    reference = str(value if value is not None else "").strip().lower()
    if not SHARE_REFERENCE.fullmatch(reference):
        raise ServiceError(_("Name the tenant by its id or its short name (slug)."), field="tenant")
    return str(int(reference)) if reference.isdigit() else reference


def share_image(*, actor, image: Image, reference: str, ip: str | None = None) -> ImageShare:
    """Offer ``image`` to the tenant named ``reference`` (its id or slug): a pending share, until an admin of
    that tenant accepts it.

    Every reference but the owner's own gets the same answer, with the same queries, whether it names a
    tenant or not (as Glance takes any member id): a reference that names none, or a tenant the image is
    offered to under another reference already, is kept with no tenant and stays pending. Sharing again
    under the same reference answers the share as it is.
    """
    reference = share_reference(reference)
    owner = image.tenant
    if owner is not None and reference in {str(owner.pk), owner.slug}:
        raise ServiceError(_("The image already belongs to %(tenant)s.") % {"tenant": owner.name}, field="tenant")
    with transaction.atomic():
        image = Image.objects.select_for_update().get(pk=image.pk)  # one share of an image at a time
        tenant_id = tenant_id_named(reference=reference)
        known = list(
            ImageShare.objects.filter(image=image).filter(Q(reference=reference) | Q(tenant_id=tenant_id or 0))
        )
        share = next((row for row in known if row.reference == reference), None)
        if share is not None:
            return share
        taken = any(row.tenant_id == tenant_id for row in known)
        share = ImageShare.objects.create(
            image=image,
            tenant_id=None if taken else tenant_id,
            reference=reference,
            requested_by=actor if actor is not None and actor.is_authenticated else None,
        )
        if image.visibility == Image.Visibility.PRIVATE:
            image.visibility = Image.Visibility.SHARED
            image.save(update_fields=["visibility", "updated_at"])
        record_audit(
            user=actor,
            action="image.share",
            target=image,
            tenant=image.tenant,
            ip=ip,
            detail={"with": reference, "share": share.pk},
        )
    return share


def unshare_image(*, actor, image: Image, reference: str, ip: str | None = None) -> Image:
    """Withdraw the share named ``reference``, and an accepted share of the tenant it names (whose id and slug
    the owner knows once it accepted). Nothing to withdraw is no error: the answer is the same either way."""
    reference = share_reference(reference)
    with transaction.atomic():
        tenant_id = tenant_id_named(reference=reference)
        named = Q(reference=reference) | Q(tenant_id=tenant_id or 0, status=ImageShare.Status.ACCEPTED)
        for share in ImageShare.objects.filter(image=image).filter(named):
            share.image = image
            withdraw_share(actor=actor, share=share, ip=ip)
    return image


def withdraw_share(*, actor, share: ImageShare, ip: str | None = None) -> None:
    """The owner takes a share back, whatever its status: the image leaves the tenant's catalogue (and, in the
    clouds, the tenant's projects stop being members of its copies)."""
    image = share.image
    with transaction.atomic():
        record_audit(
            user=actor,
            action="image.unshare",
            target=image,
            tenant=image.tenant,
            ip=ip,
            detail={"with": share.reference, "share": share.pk, "status": share.status},
        )
        share.delete()


def _answer_share(*, actor, share: ImageShare, status: str, ip: str | None) -> ImageShare:
    with transaction.atomic():
        rows = ImageShare.objects.select_for_update(of=("self",)).select_related("image", "image__tenant", "tenant")
        share = rows.get(pk=share.pk)
        if share.tenant_id is None:
            raise ConflictError(_("This share names no tenant: only its owner can withdraw it."))
        if share.status == status:
            return share  # answered already: nothing changes, nothing is recorded again
        previous = share.status
        share.status = status
        share.decided_by = actor if actor is not None and actor.is_authenticated else None
        share.decided_at = timezone.now()
        share.save(update_fields=["status", "decided_by", "decided_at"])
        record_audit(
            user=actor,
            action="image.share_accept" if status == ImageShare.Status.ACCEPTED else "image.share_reject",
            target=share.image,
            tenant=share.tenant,
            ip=ip,
            detail={
                "share": share.pk,
                "owner": share.image.tenant.slug if share.image.tenant else "",
                "previous": previous,
            },
        )
    return share


def accept_share(*, actor, share: ImageShare, ip: str | None = None) -> ImageShare:
    """The receiving tenant (one of its admins) takes the image into its catalogue: it may launch it from now on.

    A share rejected (or removed) before may be accepted later, as a Glance member may change its mind.
    """
    return _answer_share(actor=actor, share=share, status=ImageShare.Status.ACCEPTED, ip=ip)


def reject_share(*, actor, share: ImageShare, ip: str | None = None) -> ImageShare:
    """The receiving tenant turns the share down, or removes an accepted image from its catalogue.

    The share stays, rejected, so the owner cannot offer it again under the same reference; instances
    already launched from it keep running.
    """
    return _answer_share(actor=actor, share=share, status=ImageShare.Status.REJECTED, ip=ip)
