"""Hosts: only safe libvirt URIs are accepted."""

import pytest


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("qemu:///system", True),
        ("qemu+ssh://root@kvm1.lab/system", True),
        ("qemu+tls://kvm2.lab/system", True),
        ("qemu+ext:///system?command=/bin/sh", False),
        ("qemu+ssh://kvm1/system?netcat=/tmp/x", False),
        ("qemu:///system?socket=/tmp/evil.sock", False),
        ("lxc:///", False),
    ],
)
def test_host_uris_are_validated(db, uri, ok):
    from portal.services import ServiceError
    from vms.services import ensure_host

    if ok:
        assert ensure_host(name=uri, uri=uri).uri == uri
    else:
        with pytest.raises(ServiceError):
            ensure_host(name=uri, uri=uri)
