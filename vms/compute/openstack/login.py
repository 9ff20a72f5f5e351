"""How the portal logs in to an OpenStack cloud: write-only encrypted credentials, clouds.yaml, one driver per cloud.

A host of kind ``openstack`` is one cloud region. The portal logs in with the credentials stored
(encrypted with Fernet, never shown again) on the host, or with a named cloud from clouds.yaml.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from collections.abc import Mapping

import openstack.config
from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from portal.backends.base import BackendError
from portal.backends.openstack.driver import OpenStackAuth, OpenStackDriver
from portal.services import ServiceError
from portal.texts import said
from vms.compute.base import given_credentials
from vms.compute.state import host_state_changed, mark_host_down
from vms.models import Host

log = logging.getLogger(__name__)


CREDENTIAL_FIELDS = (
    "username",
    "password",
    "project_name",
    "user_domain_name",
    "project_domain_name",
    "application_credential_id",
    "application_credential_secret",
)
SECRET_FIELDS = ("password", "application_credential_secret")
# Taken from a clouds.yaml entry as well (not entered in the portal): ids instead of names.
CLOUDS_YAML_ID_FIELDS = ("project_id", "user_domain_id", "project_domain_id")


def _fernet() -> Fernet:
    """LABCLOUD_CREDENTIALS_KEY (a Fernet key) or, without one, a key derived from SECRET_KEY."""
    key = settings.LABCLOUD_CREDENTIALS_KEY
    if not key:
        digest = hashlib.sha256(b"labcloud-cloud-credentials:" + settings.SECRET_KEY.encode()).digest()
        key = base64.urlsafe_b64encode(digest).decode()
    return Fernet(key.encode() if isinstance(key, str) else key)


def encrypt_credentials(values: Mapping[str, str]) -> str:
    clean = {k: str(v) for k, v in values.items() if k in CREDENTIAL_FIELDS and v not in (None, "")}
    return _fernet().encrypt(json.dumps(clean, sort_keys=True).encode()).decode() if clean else ""


def decrypt_credentials(host: Host) -> dict[str, str]:
    if not host.credentials:
        return {}
    try:
        return json.loads(_fernet().decrypt(host.credentials.encode()))
    except (InvalidToken, ValueError) as exc:
        raise BackendError(
            _("The stored credentials of %(host)s cannot be decrypted (was the key changed?); enter them again.")
            % {"host": host.name}
        ) from exc


def credentials_summary(host: Host) -> dict[str, str]:
    """What may be shown about the stored credentials: the login names, never a secret."""
    try:
        values = decrypt_credentials(host)
    except BackendError:
        return {"error": _("cannot be decrypted")}
    return {k: v for k, v in values.items() if k not in SECRET_FIELDS}


def auth_for(host: Host) -> OpenStackAuth:
    """How to log in to the cloud: a clouds.yaml entry (``cloud_name``) or the Keystone URL + stored credentials."""
    if host.cloud_name:
        try:
            cloud = openstack.config.OpenStackConfig().get_one(cloud=host.cloud_name)
        except Exception as exc:  # openstack.config raises its own exception types for unknown clouds
            raise BackendError(
                _("Cloud “%(cloud)s” is not in clouds.yaml: %(error)s") % {"cloud": host.cloud_name, "error": exc}
            ) from exc
        auth = dict(cloud.config.get("auth") or {})
        values = {k: auth.get(k) for k in CREDENTIAL_FIELDS + CLOUDS_YAML_ID_FIELDS if auth.get(k)}
        stored = {k: v for k, v in decrypt_credentials(host).items() if v}
        for key in stored:  # what the portal stores wins: a name entered here replaces clouds.yaml's id
            if key.endswith("_name"):
                values.pop(key.removesuffix("_name") + "_id", None)
        values.update(stored)
        auth_url = host.auth_url or auth.get("auth_url") or ""
        region = host.region or cloud.config.get("region_name") or None
        verify = (cloud.config.get("cacert") or cloud.config.get("verify", True)) if host.verify_tls else False
    else:
        values = decrypt_credentials(host)
        auth_url, region, verify = host.auth_url, host.region or None, host.verify_tls
    try:
        return OpenStackAuth(
            auth_url=auth_url,
            region_name=region,
            verify=verify,
            timeout=settings.LABCLOUD_CLOUD_TIMEOUT,
            **{k: v for k, v in values.items() if k in CREDENTIAL_FIELDS + CLOUDS_YAML_ID_FIELDS},
        )
    except ValueError as exc:
        raise BackendError(_("Cloud %(host)s: %(error)s") % {"host": host.name, "error": exc}) from exc


_drivers: dict[int, tuple[str, OpenStackDriver]] = {}
_drivers_lock = threading.Lock()


def _auth_key(host: Host) -> str:
    parts = [host.cloud_name, host.auth_url, host.region, host.credentials, str(host.verify_tls)]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def cloud_driver(host: Host) -> OpenStackDriver:
    """The driver of a cloud, kept per process (its Keystone token is reused) until the host's login changes."""
    key = _auth_key(host)
    with _drivers_lock:
        found = _drivers.get(host.pk)
        if found is not None and found[0] == key:
            return found[1]
    driver = OpenStackDriver(auth_for(host), poll=settings.LABCLOUD_CLOUD_POLL_SECONDS)
    with _drivers_lock:
        old = _drivers.get(host.pk)
        _drivers[host.pk] = (key, driver)
    if old is not None:
        old[1].close()
    return driver


def forget_driver(host: Host) -> None:
    with _drivers_lock:
        old = _drivers.pop(host.pk, None)
    if old is not None:
        old[1].close()


def verify_cloud(*, host: Host) -> Host:
    """Log in and ask Nova for its versions: UP, or DOWN with the error as the reason."""
    try:
        info = cloud_driver(host).verify()
    except BackendError as exc:
        log.info("cloud %s is down: %s", host.name, exc.message)
        return mark_host_down(host=host, reason=exc.message)
    was_down = Host.objects.filter(pk=host.pk, state=Host.State.DOWN).exists()
    host.state = Host.State.UP if host.enabled else Host.State.DISABLED
    host.state_reason = ""
    host.backend_version = f"Nova {info.compute_max_microversion}"[:32]
    host.last_seen = timezone.now()
    host.save(update_fields=["state", "state_reason", "backend_version", "last_seen"])
    if was_down:
        host_state_changed(host_id=host.pk)
    return host


def merged_credentials(*, stored: dict[str, str], given: dict[str, str]) -> dict[str, str]:
    """The login after an edit: given values replace stored ones; blank ones keep them.

    A secret stays only with the login it belongs to: a new username (or application credential id)
    drops the stored password (or secret), and switching between a password login and an application
    credential drops the other method's fields.
    """
    merged = dict(stored)
    if given.get("application_credential_id"):
        for key in ("username", "password", "project_name"):
            merged.pop(key, None)
        if given["application_credential_id"] != stored.get("application_credential_id"):
            merged.pop("application_credential_secret", None)
    if given.get("username"):
        for key in ("application_credential_id", "application_credential_secret"):
            merged.pop(key, None)
        if given["username"] != stored.get("username"):
            merged.pop("password", None)
    merged.update(given)
    return merged


def check_login(*, host: Host, login: dict[str, str]) -> None:
    """A cloud without clouds.yaml entry logs in with a password or an application credential, complete."""
    if host.cloud_name:
        return  # clouds.yaml gives the rest; stored values only override it
    password_login = all(login.get(k) for k in ("username", "password", "project_name"))
    app_credential = all(login.get(k) for k in ("application_credential_id", "application_credential_secret"))
    if password_login or app_credential:
        return
    if login or host.project_mode == Host.ProjectMode.MANAGED:
        raise ServiceError(
            said(
                gettext_noop(
                    "Give a complete login: username, password and project name, or an application credential id "
                    "and secret (or a cloud name from clouds.yaml)."
                )
            ),
            field="credentials",
        )


def apply_login(host: Host, *, credentials: dict[str, str], clear: bool) -> None:
    """Apply an edit of the write-only login to ``host`` (not saved): the values ``credentials`` gives replace
    stored ones (see ``merged_credentials``), ``clear`` forgets the stored login first. Refuses unknown fields
    and an incomplete login."""
    unknown = sorted(set(credentials) - set(CREDENTIAL_FIELDS))
    if unknown:
        raise ServiceError(
            said(gettext_noop("Unknown credential fields: %(fields)s."), fields=", ".join(unknown)), field="credentials"
        )
    given = given_credentials(credentials)
    if clear or given:
        try:
            stored = {} if clear else decrypt_credentials(host)
        except BackendError:
            stored = {}  # unreadable (the key changed): the new login replaces it
        login = merged_credentials(stored=stored, given=given)
        check_login(host=host, login=login)
        if clear or login != stored:
            host.credentials = encrypt_credentials(login)
        return
    try:
        check_login(host=host, login=decrypt_credentials(host))
    except BackendError as exc:
        raise ServiceError(exc.message, field="credentials") from exc
