"""The set-up seed: admin, demo tenant, flavors, local host; idempotent; password printed once."""

from io import StringIO

from django.contrib.auth import get_user_model
from django.core.management import call_command

from portal.models import Membership, Tenant
from vms.models import Flavor, Host


def run_seed() -> str:
    out = StringIO()
    call_command("seed_portal", stdout=out)
    return out.getvalue()


def test_seed_creates_everything_once_and_prints_password_once(db, monkeypatch, settings):
    monkeypatch.delenv("LABCLOUD_ADMIN_PASSWORD", raising=False)
    monkeypatch.setenv("LABCLOUD_ADMIN_USERNAME", "root")
    first = run_seed()
    assert "password '" in first
    password = first.split("password '")[1].split("'")[0]
    admin = get_user_model().objects.get(username="root")
    assert admin.is_staff and admin.is_superuser and admin.check_password(password)
    demo = Tenant.objects.get(slug="demo")
    assert Membership.objects.get(tenant=demo, user=admin).role == "admin"
    assert Flavor.objects.filter(name__startswith="m1.").count() == 5
    assert Host.objects.get(name="local").uri == settings.LABCLOUD_DEFAULT_LIBVIRT_URI

    second = run_seed()
    assert "password" not in second
    assert "0 new flavor" in second
    assert get_user_model().objects.count() == 1
    assert Tenant.objects.count() == 1 and Host.objects.count() == 1


def test_seed_takes_the_admin_password_from_the_environment(db, monkeypatch):
    monkeypatch.setenv("LABCLOUD_ADMIN_USERNAME", "boss")
    monkeypatch.setenv("LABCLOUD_ADMIN_PASSWORD", "from-env-Pa55")
    out = run_seed()
    assert "from-env-Pa55" not in out
    assert get_user_model().objects.get(username="boss").check_password("from-env-Pa55")
