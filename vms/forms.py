"""Dashboard forms of the instance pages. They only take input; vms.lifecycle validates and decides."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.utils.translation import gettext_lazy as _

from images.models import Image
from portal.forms import BootstrapForm
from vms import actions, limits
from vms.keypairs import KEY_MAX
from vms.models import Flavor, Host, Instance, SecurityGroupRule


def _size(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib and mib % 1024 == 0 else f"{mib} MiB"


def source_needs(image: Image) -> list[str]:
    """The minimum requirements of an image, as short phrases ("RAM ≥ 1 GiB")."""
    needs = []
    if image.min_disk_gib:
        needs.append(_("disk ≥ %(gib)d GiB") % {"gib": image.min_disk_gib})
    if image.min_ram_mib:
        needs.append(_("RAM ≥ %(size)s") % {"size": _size(image.min_ram_mib)})
    return needs


def source_label(image: Image) -> str:
    needs = source_needs(image)
    return f"{image.name} ({', '.join(needs)})" if needs else image.name


def flavor_label(flavor: Flavor) -> str:
    return f"{flavor.name} — {flavor.vcpus} vCPU, {_size(flavor.ram_mib)}, {flavor.disk_gib} GiB"


class LaunchForm(BootstrapForm):
    """Launch ``count`` instances of a flavor from a disk image or an installer ISO."""

    name = forms.CharField(
        label=_("Name"),
        max_length=limits.NAME_MAX,
        widget=forms.TextInput(attrs={"placeholder": _("e.g. web-{n}"), "autocomplete": "off"}),
        help_text=_("With a count above 1, “{n}” is replaced by 1, 2, 3…; without it, “-1”, “-2”… is appended."),
    )
    image = forms.TypedChoiceField(
        label=_("Source"),
        coerce=int,
        help_text=_("A disk image boots as it is (cloud-init sets it up); an ISO boots the installer on a blank disk."),
    )
    flavor = forms.ModelChoiceField(label=_("Flavor"), queryset=Flavor.objects.none(), empty_label=None)
    count = forms.IntegerField(label=_("Count"), min_value=1, initial=1)
    network = forms.ModelChoiceField(
        label=_("Network"),
        queryset=None,
        required=False,
        empty_label=_("Host default network"),
    )
    keypair = forms.ModelChoiceField(label=_("Keypair"), queryset=None, required=False, empty_label=_("No keypair"))
    security_groups = forms.ModelMultipleChoiceField(
        label=_("Security groups"),
        queryset=None,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_(
            "Traffic the instances let in and out; “default” (also when none is ticked) lets in only its own members."
        ),
    )
    user_data = forms.CharField(
        label=_("User-data"),
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 5, "class": "font-monospace", "spellcheck": "false"}),
        help_text=_("cloud-init user-data (e.g. “#cloud-config …”); used by disk images only."),
    )

    def __init__(self, *args, images, flavors, networks, keypairs, security_groups, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["security_groups"].queryset = security_groups
        self.fields["security_groups"].widget.attrs["class"] = "form-check-input"
        self.images = {image.pk: image for image in images}
        disks = [(i.pk, source_label(i)) for i in images if i.kind == Image.Kind.DISK]
        isos = [(i.pk, source_label(i)) for i in images if i.kind == Image.Kind.ISO]
        choices: list = [("", _("Choose a disk image or ISO…"))]
        if disks:
            choices.append((_("Disk images"), disks))
        if isos:
            choices.append((_("Installer ISOs"), isos))
        self.fields["image"].choices = choices
        self.fields["flavor"].queryset = flavors
        self.fields["flavor"].widget = forms.RadioSelect()
        self.fields["network"].queryset = networks
        self.fields["keypair"].queryset = keypairs
        # The service checks the upper bound (LABCLOUD_MAX_BATCH) and names the field.
        self.fields["count"].widget.attrs.update(min=1, max=settings.LABCLOUD_MAX_BATCH)

    def clean_image(self) -> Image:
        image = self.images.get(self.cleaned_data["image"])
        if image is None:
            raise forms.ValidationError(_("Choose a disk image or ISO available to this tenant."))
        return image


class InstanceSecurityGroupsForm(BootstrapForm):
    security_groups = forms.ModelMultipleChoiceField(
        label=_("Security groups"), queryset=None, required=False, widget=forms.CheckboxSelectMultiple
    )

    def __init__(self, *args, groups, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["security_groups"].queryset = groups
        self.fields["security_groups"].widget.attrs["class"] = "form-check-input"


class SecurityGroupForm(BootstrapForm):
    name = forms.CharField(
        label=_("Name"),
        max_length=100,
        widget=forms.TextInput(attrs={"placeholder": _("e.g. web"), "autocomplete": "off"}),
    )
    description = forms.CharField(label=_("Description"), max_length=255, required=False)


class SecurityGroupRuleForm(BootstrapForm):
    """A rule; the service checks the combination (ports need a protocol, a remote group is for ingress…)."""

    direction = forms.ChoiceField(label=_("Direction"), choices=SecurityGroupRule.Direction.choices)
    protocol = forms.ChoiceField(label=_("Protocol"), choices=SecurityGroupRule.Protocol.choices, initial="tcp")
    port_min = forms.IntegerField(label=_("Port from"), required=False, min_value=0, max_value=65535,
                                  help_text=_("ICMP: the type."))  # fmt: skip
    port_max = forms.IntegerField(label=_("Port to"), required=False, min_value=0, max_value=65535,
                                  help_text=_("ICMP: the code."))  # fmt: skip
    remote_cidr = forms.CharField(
        label=_("Remote CIDR"),
        max_length=18,
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "0.0.0.0/0"}),
    )
    remote_group = forms.ModelChoiceField(
        label=_("Remote group"), queryset=None, required=False, empty_label=_("— (use the CIDR)")
    )
    description = forms.CharField(label=_("Description"), max_length=255, required=False)

    def __init__(self, *args, groups, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["remote_group"].queryset = groups


class ResizeForm(BootstrapForm):
    flavor = forms.ModelChoiceField(label=_("New flavor"), queryset=None, empty_label=None)

    def __init__(self, *args, flavors, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["flavor"].queryset = flavors
        self.fields["flavor"].label_from_instance = flavor_label


class ResourcesForm(BootstrapForm):
    vcpus = forms.IntegerField(label=_("vCPUs"), min_value=1)
    ram_mib = forms.IntegerField(label=_("RAM (MiB)"), min_value=limits.RAM_MIN_MIB)

    def __init__(self, *args, instance: Instance, **kwargs) -> None:
        kwargs.setdefault("initial", {"vcpus": instance.vcpus, "ram_mib": instance.ram_mib})
        super().__init__(*args, **kwargs)
        self.fields["vcpus"].widget.attrs["max"] = instance.flavor.vcpus
        self.fields["ram_mib"].widget.attrs["max"] = instance.flavor.ram_mib
        self.fields["vcpus"].help_text = _("At most %(max)d (the flavor).") % {"max": instance.flavor.vcpus}
        self.fields["ram_mib"].help_text = _("%(min)d to %(max)d MiB; changed while shut off.") % {
            "min": limits.RAM_MIN_MIB,
            "max": instance.flavor.ram_mib,
        }


class AttachDiskForm(BootstrapForm):
    size_gib = forms.IntegerField(
        label=_("Size (GiB)"), min_value=limits.DISK_MIN_GIB, max_value=limits.DISK_MAX_GIB, initial=10
    )


class SnapshotForm(BootstrapForm):
    prefix = "snapshot"

    name = forms.CharField(
        label=_("Name"),
        max_length=limits.SNAPSHOT_NAME_MAX,
        widget=forms.TextInput(attrs={"placeholder": _("e.g. before-upgrade"), "autocomplete": "off"}),
    )
    description = forms.CharField(label=_("Description"), max_length=255, required=False)


class CaptureForm(BootstrapForm):
    prefix = "capture"

    name = forms.CharField(
        label=_("Image name"),
        max_length=limits.IMAGE_NAME_MAX,
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
        help_text=_("The disk becomes a private image of the tenant (it counts against the image quota)."),
    )


class MigrateForm(BootstrapForm):
    """Cloud admins: where an instance migrates (empty: the scheduler picks)."""

    prefix = "migrate"

    host = forms.ModelChoiceField(
        label=_("Destination"),
        queryset=Host.objects.none(),
        required=False,
        empty_label=_("Chosen by the scheduler"),
        help_text=_("Live when it runs, cold when it is shut off; the disks are copied unless the storage is shared."),
    )

    def __init__(self, *args, instance: Instance, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["host"].queryset = (
            Host.objects.filter(kind=instance.host.kind).exclude(pk=instance.host_id).order_by("name")
            if instance.host_id is not None
            else Host.objects.none()
        )


class BulkActionForm(forms.Form):
    action = forms.ChoiceField(choices=())
    instances = forms.TypedMultipleChoiceField(coerce=int, choices=())

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = [(name, actions.get(name).button) for name in actions.BULK_ACTIONS]
        # Any id is accepted here; the view fetches them through the access gate.
        self.fields["instances"].valid_value = lambda value: str(value).isdigit()


class KeypairImportForm(BootstrapForm):
    prefix = "import"

    name = forms.CharField(
        label=_("Name"),
        max_length=100,
        widget=forms.TextInput(attrs={"placeholder": _("e.g. laptop"), "autocomplete": "off"}),
    )
    public_key = forms.CharField(
        label=_("Public key"),
        max_length=KEY_MAX,
        widget=forms.Textarea(
            attrs={
                "rows": 3,
                "class": "font-monospace",
                "placeholder": "ssh-ed25519 AAAA… user@host",
                "spellcheck": "false",
            }
        ),
        help_text=_("The content of your .pub file: ssh-ed25519, ecdsa or RSA (at least 2048 bits)."),
    )


class KeypairGenerateForm(BootstrapForm):
    prefix = "generate"

    name = forms.CharField(
        label=_("Name"),
        max_length=100,
        widget=forms.TextInput(attrs={"placeholder": _("e.g. lab-key"), "autocomplete": "off"}),
        help_text=_("An ed25519 keypair is made for you; you download the private key once."),
    )
