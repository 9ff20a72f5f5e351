"""SSH keypairs of a tenant: import a public key, or generate one whose private key is shown once.

Services are keyword-only and typed; the private key of a generated keypair is returned to the
caller and never stored. ``keypairs_for`` is the read side (through the access gate).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils.translation import gettext as _

from portal.access import MEMBER_ROLES, VIEW, is_cloud_admin, tenant_ids_for
from portal.models import Tenant
from portal.services import ConflictError, ServiceError, record_audit
from vms.models import Keypair

NAME_MAX = 100
KEY_MAX = 16_384  # an RSA key of 16384 bits is about 2,800 characters
MIN_RSA_BITS = 2048
KEY_TYPES = {
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def fingerprint_of(blob: bytes) -> str:
    """The SHA256 fingerprint of a key blob, as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_public_key(text: str) -> tuple[str, str]:
    """Check one OpenSSH public key line; returns it normalised (``type base64 [comment]``) and its fingerprint.

    Accepted: ssh-ed25519, ecdsa-sha2-nistp256/384/521 and ssh-rsa of at least 2048 bits. Raises
    ServiceError (field ``public_key``) with a message saying what is wrong.
    """
    text = (text or "").strip()
    if not text:
        raise ServiceError(_("Paste an OpenSSH public key (the content of a .pub file)."), field="public_key")
    if len(text) > KEY_MAX:
        raise ServiceError(_("This is too long for an SSH public key."), field="public_key")
    if text.startswith("-----BEGIN"):
        raise ServiceError(
            _("This looks like a private key or a PEM file. Paste the public key (the .pub file) instead."),
            field="public_key",
        )
    if "\n" in text or "\r" in text:
        raise ServiceError(_("Give exactly one public key, on a single line."), field="public_key")
    parts = text.split(None, 2)
    if len(parts) < 2:
        raise ServiceError(
            _("An OpenSSH public key looks like “ssh-ed25519 AAAA… comment”."),
            field="public_key",
        )
    key_type, data = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    if key_type not in KEY_TYPES:
        raise ServiceError(
            _("Unsupported key type “%(type)s”: use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa.")
            % {"type": key_type[:40]},
            field="public_key",
        )
    if _CONTROL.search(comment):
        raise ServiceError(_("The key's comment contains control characters."), field="public_key")
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServiceError(_("The key data is not valid base64."), field="public_key") from exc
    try:
        key = serialization.load_ssh_public_key(f"{key_type} {data}".encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ServiceError(
            _("This is not a valid %(type)s public key.") % {"type": key_type}, field="public_key"
        ) from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ServiceError(
                _("RSA keys need at least %(min)d bits; this one has %(bits)d.")
                % {"min": MIN_RSA_BITS, "bits": key.key_size},
                field="public_key",
            )
    elif not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ServiceError(_("Unsupported key type “%(type)s”.") % {"type": key_type}, field="public_key")
    normalised = f"{key_type} {data}" + (f" {comment}" if comment else "")
    return normalised, fingerprint_of(blob)


def clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ServiceError(_("A keypair needs a name."), field="name")
    if len(name) > NAME_MAX:
        raise ServiceError(_("Keep the name to %(max)d characters.") % {"max": NAME_MAX}, field="name")
    if _CONTROL.search(name):
        raise ServiceError(_("The name contains control characters."), field="name")
    return name


def require_member(*, actor, tenant: Tenant) -> None:
    """ServiceError (field ``tenant``) unless ``actor`` is a member of ``tenant`` or a cloud admin."""
    if is_cloud_admin(actor):
        return
    authenticated = actor is not None and getattr(actor, "is_authenticated", False)
    if not authenticated or not tenant_ids_for(actor, MEMBER_ROLES).filter(tenant_id=tenant.pk).exists():
        raise ServiceError(_("You are not a member of this tenant."), field="tenant")


def _create(*, actor, tenant: Tenant, name: str, public_key: str, fingerprint: str, generated: bool, ip) -> Keypair:
    if Keypair.objects.filter(tenant=tenant, name=name).exists():
        raise ConflictError(
            _("This tenant already has a keypair named “%(name)s”.") % {"name": name},
            field="name",
        )
    authenticated = actor is not None and getattr(actor, "is_authenticated", False)
    try:
        with transaction.atomic():
            keypair = Keypair.objects.create(
                tenant=tenant,
                owner=actor if authenticated else None,
                name=name,
                public_key=public_key,
                fingerprint=fingerprint,
            )
            record_audit(
                user=actor,
                action="keypair.create",
                target=keypair,
                tenant=tenant,
                ip=ip,
                detail={"fingerprint": fingerprint, "generated": generated},
            )
    except IntegrityError as exc:
        raise ConflictError(
            _("A keypair named “%(name)s” was created at the same time; pick another name.") % {"name": name},
            field="name",
        ) from exc
    return keypair


def import_keypair(*, actor, tenant: Tenant, name: str, public_key: str, ip: str | None = None) -> Keypair:
    """Store a user's existing public key for ``tenant``."""
    name = clean_name(name)
    require_member(actor=actor, tenant=tenant)
    normalised, fingerprint = parse_public_key(public_key)
    return _create(
        actor=actor,
        tenant=tenant,
        name=name,
        public_key=normalised,
        fingerprint=fingerprint,
        generated=False,
        ip=ip,
    )


def generate_keypair(*, actor, tenant: Tenant, name: str, ip: str | None = None) -> tuple[Keypair, str]:
    """Make a new ed25519 keypair; returns it and the private key (OpenSSH PEM), which is not stored anywhere."""
    name = clean_name(name)
    require_member(actor=actor, tenant=tenant)
    private = ed25519.Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    comment = re.sub(r"\s+", "-", name)
    normalised, fingerprint = parse_public_key(f"{public.decode()} {comment}")
    keypair = _create(
        actor=actor,
        tenant=tenant,
        name=name,
        public_key=normalised,
        fingerprint=fingerprint,
        generated=True,
        ip=ip,
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    return keypair, pem.decode()


@transaction.atomic
def delete_keypair(*, actor, keypair: Keypair, ip: str | None = None) -> None:
    """Forget a keypair. Guests that already got the key keep it; instances merely lose the reference."""
    record_audit(
        user=actor,
        action="keypair.delete",
        target=keypair,
        tenant=keypair.tenant,
        ip=ip,
        detail={"fingerprint": keypair.fingerprint},
    )
    keypair.delete()


def keypairs_for(*, user, tenant: Tenant | None = None) -> QuerySet[Keypair]:
    """Keypairs the user may see (optionally of one tenant), with tenant and owner joined in."""
    keypairs = Keypair.objects.restrict(user, VIEW)
    if tenant is not None:
        keypairs = keypairs.filter(tenant=tenant)
    return keypairs.select_related("tenant", "owner")
