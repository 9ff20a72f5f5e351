"""Safety inspection of untrusted image files, before anything else touches them.

1. oslo.utils' format inspector (the one Nova and Glance use) reads the file itself: it
   detects the real format and runs its safety checks (no backing file, no external data
   file, no VMDK extents pointing elsewhere, …). A format it cannot vouch for is refused.
2. The detected format must be the declared one (a raw disk with a GPT counts as raw).
3. The virtual size must be within the configured limit.
4. Only then does ``qemu-img info`` (explicit format, resource-limited) confirm the same
   facts and refuses encrypted images (a LUKS-encrypted qcow2: no guest could boot it), and
   ``qemu-img check`` refuses truncated or corrupt qcow2/VDI images.

Every ``ImageRejected`` message is shown to the uploader: qemu-img's words are kept, server paths
never (``images.qemu`` strips them).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.template.defaultfilters import filesizeformat
from django.utils.translation import gettext as _
from oslo_utils.imageutils import format_inspector

from images import qemu

log = logging.getLogger(__name__)

# Portal format name -> (format inspector names that prove it, qemu-img driver name)
FORMATS: dict[str, tuple[frozenset[str], str]] = {
    "qcow2": (frozenset({"qcow2"}), "qcow2"),
    "raw": (frozenset({"raw", "gpt"}), "raw"),
    "iso": (frozenset({"iso"}), "raw"),
    "vmdk": (frozenset({"vmdk"}), "vmdk"),
    "vhd": (frozenset({"vhd"}), "vpc"),
    "vdi": (frozenset({"vdi"}), "vdi"),
}
CHECKABLE = {"qcow2", "vdi"}
CHUNK = 64 * 1024  # formats qemu-img check understands and that carry metadata to corrupt


def _detect(path: Path) -> format_inspector.FileInspector | None:
    """The format inspector's verdict, like ``detect_file_format``, but accepting a bootable (hybrid) ISO.

    Installer ISOs usually carry a GPT as well, so both the ISO and the GPT inspector match;
    like Nova, the ISO wins in exactly that case. Any other double match is refused.
    """
    with open(path, "rb") as fh:
        wrapper = format_inspector.InspectWrapper(fh)
        try:
            while wrapper.read(CHUNK) and wrapper.formats is None:
                pass
        finally:
            wrapper.close()
        matches = wrapper.formats or []
    if len(matches) > 1 and {str(m) for m in matches} == {"iso", "gpt"}:
        return next(m for m in matches if str(m) == "iso")
    return wrapper.format


class ImageRejected(Exception):
    """The file is not safe or not what it claims to be; ``message`` is user-facing."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Inspection:
    format: str  # portal format name
    qemu_format: str  # qemu-img driver name
    virtual_size: int
    file_size: int


def inspect_file(path: Path, *, declared_format: str) -> Inspection:
    if declared_format not in FORMATS:
        raise ImageRejected(_("Unsupported disk format “%(format)s”.") % {"format": declared_format})
    accepted, qemu_format = FORMATS[declared_format]
    file_size = os.path.getsize(path)
    if file_size == 0:
        raise ImageRejected(_("The file is empty."))

    try:
        inspector = _detect(path)
    except format_inspector.ImageFormatError as exc:
        raise ImageRejected(_("The image format could not be determined safely: %(error)s") % {"error": exc}) from exc
    detected = str(inspector) if inspector is not None else "unknown"
    if detected not in accepted:
        raise ImageRejected(
            _("The file is %(detected)s, not %(declared)s as declared.")
            % {"detected": detected, "declared": declared_format}
        )
    try:
        inspector.safety_check()
    except format_inspector.SafetyCheckFailed as exc:
        reasons = ", ".join(sorted(exc.failures)) if getattr(exc, "failures", None) else str(exc)
        raise ImageRejected(_("The image failed the safety checks (%(checks)s).") % {"checks": reasons}) from exc
    except format_inspector.ImageFormatError as exc:
        raise ImageRejected(_("The image could not be safety-checked: %(error)s") % {"error": exc}) from exc

    virtual_size = file_size if qemu_format == "raw" else int(inspector.virtual_size)
    limit = settings.LABCLOUD_IMAGE_MAX_VIRTUAL_SIZE
    if virtual_size > limit:
        raise ImageRejected(
            _("The virtual size %(size)s exceeds the limit of %(limit)s.")
            % {"size": filesizeformat(virtual_size), "limit": filesizeformat(limit)}
        )

    try:
        facts = qemu.info(path, fmt=qemu_format)
    except qemu.QemuImgError as exc:
        raise ImageRejected(_("qemu-img cannot read the image: %(error)s") % {"error": exc}) from exc
    if facts.encrypted:
        raise ImageRejected(
            _("The image is encrypted; the portal cannot boot encrypted disk images. Upload an unencrypted image.")
        )
    if facts.backing_file or facts.data_file:
        raise ImageRejected(_("The image refers to other files (backing or data file)."))
    if facts.virtual_size > limit:
        raise ImageRejected(
            _("The virtual size %(size)s exceeds the limit of %(limit)s.")
            % {"size": filesizeformat(facts.virtual_size), "limit": filesizeformat(limit)}
        )
    if qemu_format in CHECKABLE:
        try:
            qemu.check(path, fmt=qemu_format)
        except qemu.QemuImgError as exc:
            raise ImageRejected(_("The image is truncated or corrupt: %(error)s") % {"error": exc}) from exc
    return Inspection(
        format=declared_format, qemu_format=qemu_format, virtual_size=facts.virtual_size, file_size=file_size
    )
