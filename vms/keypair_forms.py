"""Dashboard forms of the keypairs page. They only take input; vms.keypairs validates and decides."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from portal.forms import BootstrapForm
from vms.keypairs import KEY_MAX


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
