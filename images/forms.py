"""Dashboard forms of the image catalogue. They only validate input; images.services decides."""

from __future__ import annotations

from django import forms
from django.template.defaultfilters import filesizeformat
from django.utils.translation import gettext_lazy as _

from images.models import Image
from portal.forms import BootstrapForm
from portal.models import Tenant

# The format select groups disk images and installer ISOs (the kind follows from the format).
FORMAT_CHOICES = [
    (
        _("Disk images"),
        [
            (Image.DiskFormat.QCOW2, "qcow2"),
            (Image.DiskFormat.RAW, _("raw")),
            (Image.DiskFormat.VMDK, "VMDK (VMware)"),
            (Image.DiskFormat.VHD, "VHD (Hyper-V, Azure)"),
            (Image.DiskFormat.VDI, "VDI (VirtualBox)"),
        ],
    ),
    (_("Installer ISO"), [(Image.DiskFormat.ISO, _("ISO 9660 installer"))]),
]
CLOUD_OWNER = "cloud"


def visibility_choices(*, staff: bool) -> list[tuple[str, str]]:
    choices = [
        (Image.Visibility.PRIVATE, _("Private: this tenant only")),
        (Image.Visibility.SHARED, _("Shared with chosen tenants")),
    ]
    if staff:
        choices.append((Image.Visibility.PUBLIC, _("Public: every tenant")))
    return choices


class ImageMetadataForm(BootstrapForm):
    """The metadata every way of adding an image asks for; ``staff`` unlocks public images and cloud-owned images."""

    service_fields = {"size": "file", "kind": "disk_format"}

    name = forms.CharField(
        label=_("Name"),
        max_length=100,
        widget=forms.TextInput(attrs={"placeholder": _("e.g. Debian 13 (trixie)"), "autocomplete": "off"}),
    )
    owner = forms.ChoiceField(
        label=_("Owner"),
        required=False,
        help_text=_("Images owned by the cloud count against no tenant's quota."),
    )
    disk_format = forms.ChoiceField(
        label=_("Format"),
        choices=FORMAT_CHOICES,
        initial=Image.DiskFormat.QCOW2,
        help_text=_("Disk images are converted to qcow2 after the upload; ISOs are kept as they are."),
    )
    visibility = forms.ChoiceField(label=_("Visibility"), initial=Image.Visibility.PRIVATE)
    os_type = forms.ChoiceField(label=_("OS type"), choices=Image.OsType.choices, initial=Image.OsType.LINUX)
    min_disk_gib = forms.IntegerField(
        label=_("Minimum disk (GiB)"),
        min_value=0,
        max_value=65536,
        initial=0,
        help_text=_("Raised to the image's virtual size automatically."),
    )
    min_ram_mib = forms.IntegerField(label=_("Minimum RAM (MiB)"), min_value=0, max_value=2**31 - 1, initial=0)
    cloud_init = forms.BooleanField(
        label=_("cloud-init capable"),
        required=False,
        help_text=_("The image configures itself from cloud-init data (SSH keys, user, network)."),
    )
    description = forms.CharField(
        label=_("Description"), max_length=255, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )

    def __init__(self, *args, tenant: Tenant | None, staff: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        self.fields["visibility"].choices = visibility_choices(staff=staff)
        if staff:
            owners = [(CLOUD_OWNER, _("The cloud (all tenants)"))]
            if tenant is not None:
                owners.insert(0, (str(tenant.pk), tenant.name))
            self.fields["owner"].choices = owners
            self.fields["owner"].initial = owners[0][0]
        else:
            del self.fields["owner"]
        self.fields["cloud_init"].widget.attrs["class"] = "form-check-input"

    def owner_tenant(self) -> Tenant | None:
        """The tenant that will own the image: the active one, or none (the cloud) when staff chose so."""
        if self.cleaned_data.get("owner", "") == CLOUD_OWNER:
            return None
        return self.tenant

    def options(self) -> dict:
        data = self.cleaned_data
        return {
            "visibility": data["visibility"],
            "description": data["description"],
            "min_disk_gib": data["min_disk_gib"],
            "min_ram_mib": data["min_ram_mib"],
            "os_type": data["os_type"],
            "cloud_init": data["cloud_init"],
        }


class ImageUploadForm(ImageMetadataForm):
    """Rendered for the JavaScript uploader (which talks to the API); without JavaScript it is posted as is."""

    file = forms.FileField(label=_("File"))

    def __init__(self, *args, fallback_limit: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fallback_limit = fallback_limit
        self.fields["file"].widget.attrs["accept"] = ".qcow2,.img,.raw,.vmdk,.vhd,.vpc,.vdi,.iso"

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > self.fallback_limit:
            raise forms.ValidationError(
                _("Without JavaScript, files up to %(limit)s can be uploaded. Enable JavaScript for larger files.")
                % {"limit": filesizeformat(self.fallback_limit)}
            )
        return upload


class ImageImportForm(ImageMetadataForm):
    field_order = ["name", "url", "owner", "disk_format"]

    url = forms.URLField(
        label=_("URL"),
        max_length=1000,
        assume_scheme="https",
        widget=forms.URLInput(
            attrs={"placeholder": "https://cloud.debian.org/images/cloud/…/debian-13-generic-amd64.qcow2"}
        ),
        help_text=_("The worker downloads the file from this http:// or https:// address."),
    )


class ImageEditForm(BootstrapForm):
    name = forms.CharField(label=_("Name"), max_length=100)
    description = forms.CharField(
        label=_("Description"), max_length=255, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )
    visibility = forms.ChoiceField(label=_("Visibility"))
    os_type = forms.ChoiceField(label=_("OS type"), choices=Image.OsType.choices)
    min_disk_gib = forms.IntegerField(label=_("Minimum disk (GiB)"), min_value=0, max_value=65536)
    min_ram_mib = forms.IntegerField(label=_("Minimum RAM (MiB)"), min_value=0, max_value=2**31 - 1)
    cloud_init = forms.BooleanField(label=_("cloud-init capable"), required=False)
    protected = forms.BooleanField(
        label=_("Protected"), required=False, help_text=_("A protected image cannot be deleted.")
    )

    FIELDS = ("name", "description", "visibility", "os_type", "min_disk_gib", "min_ram_mib", "cloud_init", "protected")

    def __init__(self, *args, image: Image, staff: bool, **kwargs) -> None:
        kwargs.setdefault("initial", {name: getattr(image, name) for name in self.FIELDS})
        super().__init__(*args, **kwargs)
        choices = visibility_choices(staff=staff)
        if image.visibility == Image.Visibility.PUBLIC and not staff:
            # A public image stays editable by its tenant; only making it public is reserved to staff.
            choices.append((Image.Visibility.PUBLIC, Image.Visibility.PUBLIC.label))
        self.fields["visibility"].choices = choices
        for name in ("cloud_init", "protected"):
            self.fields[name].widget.attrs["class"] = "form-check-input"

    def changes(self) -> dict:
        return {name: self.cleaned_data[name] for name in self.FIELDS if name in self.changed_data}


class ShareForm(BootstrapForm):
    """The tenant is named as the owner knows it; images.services checks the reference (one answer for all)."""

    tenant = forms.CharField(
        label=_("Tenant"),
        max_length=100,
        widget=forms.TextInput(attrs={"placeholder": _("e.g. physics-lab"), "autocomplete": "off"}),
        help_text=_("Its short name (slug) or id. It sees the image once one of its admins accepts the share."),
    )


class DistributeForm(BootstrapForm):
    host = forms.ModelChoiceField(label=_("Host"), queryset=None, empty_label=None)

    def __init__(self, *args, hosts, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["host"].queryset = hosts
