"""Keypairs: the services (validation, fingerprints, generation), /api/v1/keypairs/, the dashboard page
and the admin."""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from django.test import Client
from django.urls import reverse

from portal.models import AuditEvent
from portal.services import ConflictError, ServiceError
from portal.testing import assert_access_matrix, assert_constant_queries, assert_problem
from vms.keypairs import delete_keypair, generate_keypair, import_keypair, keypairs_for
from vms.models import Keypair

pytestmark = pytest.mark.django_db
URL = "/api/v1/keypairs/"
_serial = itertools.count()


def openssh(key, comment: str = "user@host") -> str:
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}" if comment else line


def ed25519_line(comment: str = "user@host") -> str:
    return openssh(ed25519.Ed25519PrivateKey.generate().public_key(), comment)


def independent_fingerprint(line: str) -> str:
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def ssh_keygen_fingerprint(line: str, tmp_path) -> str:
    path = tmp_path / f"k{next(_serial)}.pub"
    path.write_text(line + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def expected_fingerprint(line: str, tmp_path) -> str:
    return ssh_keygen_fingerprint(line, tmp_path) if shutil.which("ssh-keygen") else independent_fingerprint(line)


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def keypair_a(actors):
    return import_keypair(actor=actors.member, tenant=actors.tenant, name="laptop", public_key=ed25519_line())


# ---------------------------------------------------------------- services: import


@pytest.mark.parametrize(
    "make",
    [
        lambda: ed25519.Ed25519PrivateKey.generate().public_key(),
        lambda: ec.generate_private_key(ec.SECP256R1()).public_key(),
        lambda: ec.generate_private_key(ec.SECP384R1()).public_key(),
        lambda: ec.generate_private_key(ec.SECP521R1()).public_key(),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
    ],
    ids=["ed25519", "ecdsa256", "ecdsa384", "ecdsa521", "rsa2048"],
)
def test_import_accepts_supported_keys_with_ssh_keygen_fingerprints(actors, tmp_path, make):
    line = openssh(make(), "alice@laptop")
    keypair = import_keypair(actor=actors.member, tenant=actors.tenant, name="k", public_key=f"  {line}\n")
    assert keypair.public_key == line
    assert keypair.fingerprint == expected_fingerprint(line, tmp_path)
    assert keypair.fingerprint == independent_fingerprint(line)
    assert keypair.owner == actors.member and keypair.tenant == actors.tenant
    event = AuditEvent.objects.get(action="keypair.create")
    assert event.tenant == actors.tenant and event.detail["generated"] is False


def test_import_keeps_a_key_without_comment(actors):
    line = ed25519_line(comment="")
    assert import_keypair(actor=actors.member, tenant=actors.tenant, name="k", public_key=line).public_key == line


def _rsa_1024() -> str:
    return openssh(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key())  # noqa: S505 - refused


def _dsa() -> str:
    blob = b"\x00\x00\x00\x07ssh-dss" + bytes(64)
    return "ssh-dss " + base64.b64encode(blob).decode()


def _mismatched() -> str:
    # an ed25519 blob announced as ssh-rsa
    return "ssh-rsa " + ed25519_line().split()[1]


def _private_pem() -> str:
    return (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        .decode()
    )


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: "", "Paste"),
        (lambda: "   ", "Paste"),
        (lambda: "not a key", "Unsupported key type"),
        (lambda: "ssh-ed25519", "looks like"),
        (lambda: "ssh-ed25519 !!!notbase64!!!", "base64"),
        (lambda: "ssh-ed25519 " + base64.b64encode(b"garbage").decode(), "not a valid"),
        (_rsa_1024, "at least 2048 bits"),
        (_dsa, "Unsupported key type"),
        (_mismatched, "not a valid"),
        (lambda: ed25519_line() + "\n" + ed25519_line(), "single line"),
        (_private_pem, "private key"),
        (lambda: 'command="rm -rf /" ' + ed25519_line(), "Unsupported key type"),
        (lambda: ed25519_line("bad\x07comment"), "control characters"),
        (lambda: "ssh-ed25519 " + "A" * 20000, "too long"),
    ],
    ids=[
        "empty",
        "blank",
        "garbage",
        "type-only",
        "bad-base64",
        "bad-blob",
        "rsa1024",
        "dsa",
        "mismatched-type",
        "two-keys",
        "private-key",
        "options",
        "control-comment",
        "too-long",
    ],
)
def test_import_refuses_bad_keys_and_changes_nothing(actors, make, needle):
    with pytest.raises(ServiceError) as info:
        import_keypair(actor=actors.member, tenant=actors.tenant, name="k", public_key=make())
    assert info.value.field == "public_key"
    assert needle in info.value.message
    assert not Keypair.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="keypair.").exists()


@pytest.mark.parametrize(("name", "needle"), [("", "needs a name"), ("x" * 101, "100"), ("a\nb", "control")])
def test_import_refuses_bad_names(actors, name, needle):
    with pytest.raises(ServiceError) as info:
        import_keypair(actor=actors.member, tenant=actors.tenant, name=name, public_key=ed25519_line())
    assert info.value.field == "name" and needle in info.value.message
    assert not Keypair.objects.exists()


def test_names_are_unique_per_tenant(actors, keypair_a):
    with pytest.raises(ConflictError) as info:
        import_keypair(actor=actors.tenant_admin, tenant=actors.tenant, name=" laptop ", public_key=ed25519_line())
    assert info.value.field == "name" and info.value.status == 409
    other = import_keypair(actor=actors.outsider, tenant=actors.other_tenant, name="laptop", public_key=ed25519_line())
    assert other.tenant == actors.other_tenant
    assert Keypair.objects.filter(tenant=actors.tenant).count() == 1


def test_only_members_and_cloud_admins_add_keypairs(actors):
    with pytest.raises(ServiceError) as info:
        import_keypair(actor=actors.outsider, tenant=actors.tenant, name="k", public_key=ed25519_line())
    assert info.value.field == "tenant"
    with pytest.raises(ServiceError):
        generate_keypair(actor=actors.outsider, tenant=actors.tenant, name="k")
    assert not Keypair.objects.exists()
    assert import_keypair(actor=actors.cloud_admin, tenant=actors.tenant, name="k", public_key=ed25519_line())


# ---------------------------------------------------------------- services: generate, delete, selector


def test_generate_returns_a_private_key_that_matches_and_is_not_stored(actors, tmp_path):
    keypair, private_pem = generate_keypair(actor=actors.member, tenant=actors.tenant, name="lab key")
    assert private_pem.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    private = serialization.load_ssh_private_key(private_pem.encode(), password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    public = openssh(private.public_key(), comment="")
    assert keypair.public_key.split()[:2] == public.split()
    assert keypair.public_key.endswith(" lab-key")
    assert keypair.fingerprint == expected_fingerprint(keypair.public_key, tmp_path)
    # the private key is nowhere in the database
    secret = private_pem.splitlines()[1]
    row = Keypair.objects.filter(pk=keypair.pk).values().get()
    assert all(secret not in str(value) for value in row.values())
    event = AuditEvent.objects.get(action="keypair.create")
    assert event.detail == {"fingerprint": keypair.fingerprint, "generated": True}
    assert secret not in str(event.detail)


def test_generate_refuses_a_taken_name(actors, keypair_a):
    with pytest.raises(ConflictError):
        generate_keypair(actor=actors.member, tenant=actors.tenant, name="laptop")
    assert Keypair.objects.count() == 1


def test_delete_keypair(actors, keypair_a):
    delete_keypair(actor=actors.member, keypair=keypair_a)
    assert not Keypair.objects.exists()
    event = AuditEvent.objects.get(action="keypair.delete")
    assert event.tenant == actors.tenant and event.detail["fingerprint"] == keypair_a.fingerprint


def test_keypairs_for(actors, keypair_a):
    import_keypair(actor=actors.outsider, tenant=actors.other_tenant, name="b", public_key=ed25519_line())
    assert [k.name for k in keypairs_for(user=actors.member)] == ["laptop"]
    assert [k.name for k in keypairs_for(user=actors.outsider)] == ["b"]
    assert {k.name for k in keypairs_for(user=actors.cloud_admin)} == {"laptop", "b"}
    assert [k.name for k in keypairs_for(user=actors.cloud_admin, tenant=actors.other_tenant)] == ["b"]


# ---------------------------------------------------------------- API


def detail(keypair) -> str:
    return f"{URL}{keypair.pk}/"


def test_api_list_matrix(actors, keypair_a):
    assert_access_matrix(
        actors,
        method="get",
        url=URL,
        expected={"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_api_list_shows_only_your_tenants_keypairs(actors, keypair_a):
    assert actors.client("outsider").get(URL).json()["results"] == []
    rows = actors.client("member").get(URL).json()["results"]
    assert [(r["name"], r["tenant"], r["owner"], r["fingerprint"]) for r in rows] == [
        ("laptop", actors.tenant.pk, "member", keypair_a.fingerprint)
    ]
    assert "private_key" not in rows[0]
    staff = actors.client("cloud_admin")
    assert len(staff.get(URL, {"tenant": actors.tenant.pk}).json()["results"]) == 1
    assert staff.get(URL, {"tenant": actors.other_tenant.pk}).json()["results"] == []
    assert_problem(actors.client("member").get(URL, {"tenant": actors.other_tenant.pk}), 400)


def test_api_retrieve_matrix(actors, keypair_a):
    assert_access_matrix(
        actors,
        method="get",
        url=detail(keypair_a),
        expected={"anonymous": 401, "outsider": 404, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_api_import_matrix(actors):
    line = ed25519_line()

    def url():
        Keypair.objects.filter(name="imported").delete()
        return URL

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        data={"tenant": actors.tenant.pk, "name": "imported", "public_key": line},
        # the outsider's "tenant" does not exist for them: a 400 on the field, as for any unknown id
        expected={"anonymous": 401, "outsider": 400, "member": 201, "tenant_admin": 201, "cloud_admin": 201},
    )


def test_api_generate_matrix(actors):
    def url():
        Keypair.objects.filter(name="generated").delete()
        return URL

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        data={"tenant": actors.tenant.pk, "name": "generated"},
        expected={"anonymous": 401, "outsider": 400, "member": 201, "tenant_admin": 201, "cloud_admin": 201},
    )


def test_api_delete_matrix(actors):
    def url():
        keypair = import_keypair(
            actor=actors.member, tenant=actors.tenant, name=f"tmp{next(_serial)}", public_key=ed25519_line()
        )
        return detail(keypair)

    assert_access_matrix(
        actors,
        method="delete",
        url=url,
        expected={"anonymous": 401, "outsider": 404, "member": 204, "tenant_admin": 204, "cloud_admin": 204},
    )


def test_api_import_and_generate_answers(actors, tmp_path):
    client = actors.client("member")
    line = ed25519_line("me@desk")
    response = client.post(URL, {"tenant": actors.tenant.pk, "name": "desk", "public_key": line}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["private_key"] is None and body["public_key"] == line
    assert body["fingerprint"] == expected_fingerprint(line, tmp_path)

    response = client.post(URL, {"tenant": actors.tenant.pk, "name": "gen"}, format="json")
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    private = serialization.load_ssh_private_key(body["private_key"].encode(), password=None)
    assert openssh(private.public_key(), "").split() == body["public_key"].split()[:2]
    # shown once: reading it back never shows the private key
    again = client.get(f"{URL}{body['id']}/").json()
    assert "private_key" not in again


def test_api_errors_are_problems_and_change_nothing(actors, keypair_a):
    client = actors.client("member")
    body = assert_problem(
        client.post(URL, {"tenant": actors.tenant.pk, "name": "x", "public_key": "ssh-rsa AAAA"}, format="json"),
        400,
    )
    assert "public_key" in body["errors"]
    body = assert_problem(
        client.post(URL, {"tenant": actors.tenant.pk, "name": "laptop"}, format="json"), 409, "conflict"
    )
    assert "name" in body["errors"]
    body = assert_problem(client.post(URL, {"name": "nameless"}, format="json"), 400)
    assert "tenant" in body["errors"]
    assert Keypair.objects.count() == 1


def test_api_keypairs_cannot_be_changed(actors, keypair_a):
    response = actors.client("member").patch(detail(keypair_a), {"name": "renamed"}, format="json")
    assert response.status_code == 405


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
def test_api_list_queries(actors, role):
    def make_rows(n: int) -> None:
        for _ in range(n):
            i = next(_serial)
            import_keypair(actor=actors.member, tenant=actors.tenant, name=f"a{i}", public_key=ed25519_line())
            import_keypair(actor=actors.outsider, tenant=actors.other_tenant, name=f"b{i}", public_key=ed25519_line())

    client = actors.client(role)

    def request():
        assert client.get(URL, {"page_size": 100}).status_code == 200

    assert_constant_queries(make_rows, request, budget=6)


# ---------------------------------------------------------------- dashboard


def test_keypairs_page_matrix(actors, keypair_a):
    assert_access_matrix(
        actors,
        method="get",
        url=reverse("keypairs"),
        api=False,
        expected={"anonymous": 302, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_keypairs_page_lists_the_active_tenants_keypairs(actors, keypair_a):
    html = login(actors.member).get(reverse("keypairs")).content.decode()
    assert 'data-keypair="laptop"' in html and keypair_a.fingerprint in html
    assert 'id="lc-keypair-import"' in html and 'id="lc-keypair-generate"' in html
    assert reverse("keypairs") in html  # the nav link
    assert 'data-keypair="laptop"' not in login(actors.outsider).get(reverse("keypairs")).content.decode()


def test_keypairs_page_sorts_by_its_column_headers(actors, keypair_a):
    other = import_keypair(actor=actors.tenant_admin, tenant=actors.tenant, name="desktop", public_key=ed25519_line())
    client = login(actors.member)

    def names(**params) -> list[str]:
        return re.findall(r'data-keypair="([^"]+)"', client.get(reverse("keypairs"), params).content.decode())

    assert names(sort="name") == [other.name, keypair_a.name]
    assert names(sort="-name") == [keypair_a.name, other.name]
    assert names(sort="-created") == [other.name, keypair_a.name]


def test_dashboard_import(actors):
    client = login(actors.member)
    line = ed25519_line()
    response = client.post(reverse("keypair_import"), {"import-name": "desk", "import-public_key": line})
    assert response.status_code == 302
    assert Keypair.objects.get(name="desk").public_key == line
    response = client.post(reverse("keypair_import"), {"import-name": "bad", "import-public_key": "ssh-rsa AAA"})
    assert response.status_code == 200
    assert "is-invalid" in response.content.decode()
    assert not Keypair.objects.filter(name="bad").exists()


def test_dashboard_generate_shows_the_private_key_once(actors):
    client = login(actors.member)
    response = client.post(reverse("keypair_generate"), {"generate-name": "lab"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "BEGIN OPENSSH PRIVATE KEY" in html
    assert 'id="lc-download-key"' in html and 'download="lab.pem"' in html
    assert "no-cache" in response["Cache-Control"] or "no-store" in response["Cache-Control"]
    keypair = Keypair.objects.get(name="lab")
    assert keypair.tenant == actors.tenant
    assert "PRIVATE KEY" not in client.get(reverse("keypairs")).content.decode()
    # a taken name: the form shows the error, nothing new
    response = client.post(reverse("keypair_generate"), {"generate-name": "lab"})
    assert response.status_code == 200 and "already has a keypair" in response.content.decode()
    assert Keypair.objects.count() == 1


def test_dashboard_forms_need_post_and_a_tenant(actors, make_user):
    assert login(actors.member).get(reverse("keypair_generate")).status_code == 405
    lonely = make_user("lonely")
    assert login(lonely).post(reverse("keypair_generate"), {"generate-name": "x"}).status_code == 403
    assert not Keypair.objects.exists()


def test_dashboard_delete_matrix(actors):
    def url():
        keypair = import_keypair(
            actor=actors.member, tenant=actors.tenant, name=f"d{next(_serial)}", public_key=ed25519_line()
        )
        return reverse("keypair_delete", args=[keypair.pk])

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        data={},
        api=False,
        expected={"anonymous": 302, "outsider": 404, "member": 302, "tenant_admin": 302, "cloud_admin": 302},
    )
    assert Keypair.objects.count() == 2  # the anonymous and outsider ones are still there


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
def test_keypairs_page_queries(actors, role):
    def make_rows(n: int) -> None:
        for _ in range(n):
            import_keypair(
                actor=actors.member, tenant=actors.tenant, name=f"p{next(_serial)}", public_key=ed25519_line()
            )

    client = login(actors.user(role))

    def request():
        assert client.get(reverse("keypairs")).status_code == 200

    assert_constant_queries(make_rows, request, budget=8)


# ---------------------------------------------------------------- admin


def test_admin_imports_through_the_service(actors):
    client = login(actors.cloud_admin)
    line = ed25519_line()
    response = client.post(
        reverse("admin:vms_keypair_add"), {"tenant": actors.tenant.pk, "name": "adm", "public_key": line}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    keypair = Keypair.objects.get(name="adm")
    assert keypair.fingerprint == independent_fingerprint(line) and keypair.owner == actors.cloud_admin
    assert AuditEvent.objects.filter(action="keypair.create", target_id=str(keypair.pk)).exists()
    response = client.post(
        reverse("admin:vms_keypair_add"), {"tenant": actors.tenant.pk, "name": "bad", "public_key": "nope AAAA"}
    )
    assert response.status_code == 200 and "Unsupported key type" in response.content.decode()
    assert client.get(reverse("admin:vms_keypair_change", args=[keypair.pk])).status_code == 200
    response = client.post(reverse("admin:vms_keypair_delete", args=[keypair.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert AuditEvent.objects.filter(action="keypair.delete").exists()
    assert not Keypair.objects.exists()
