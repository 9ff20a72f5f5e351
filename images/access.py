"""The image catalogue's access helper, used alike by pages and the API (see ``portal.access.access_by_id``)."""

from __future__ import annotations

from images.models import Image, ImageShare
from images.selectors import images_for, shares_for
from portal.access import VIEW, access_by_id


def access_image_by_id(*, user, image_id, action: str = VIEW) -> Image:
    """An image the user may see (else Http404) and ``action`` (else PermissionDenied)."""
    return access_by_id(images_for(user=user).select_related("owner"), user=user, pk=image_id, action=action)


def access_share_by_id(*, user, share_id, action: str = VIEW) -> ImageShare:
    """A share the user may see (offered to one of their tenants or of one of their tenants' images), else Http404;
    ``action`` (``CHANGE``: accept or reject; ``DELETE``: withdraw) else PermissionDenied."""
    return access_by_id(shares_for(user=user), user=user, pk=share_id, action=action)
