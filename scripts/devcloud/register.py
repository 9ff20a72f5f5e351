"""Create the service project, service users and catalog entries in a freshly bootstrapped Keystone.

Run by up.sh with the keystone venv's Python: `register.py CLOUDS_YAML`. Idempotent.
"""

import sys

import openstack
import yaml

SERVICES = [  # user (password = user name), service type, URL
    ("glance", "image", "http://127.0.0.1:9292"),
    ("placement", "placement", "http://127.0.0.1:8778"),
    ("nova", "compute", "http://127.0.0.1:8774/v2.1"),
    ("neutron", "network", "http://127.0.0.1:9696"),
]


def main(clouds_yaml: str) -> None:
    with open(clouds_yaml) as fh:
        cloud = yaml.safe_load(fh)["clouds"]["devcloud-admin"]
    conn = openstack.connect(load_yaml_config=False, **cloud["auth"], region_name=cloud["region_name"])
    idn = conn.identity
    dom = idn.find_domain("Default")
    svc = idn.find_project("service", domain_id=dom.id) or idn.create_project(name="service", domain_id=dom.id)
    admin_role, service_role = idn.find_role("admin"), idn.find_role("service")
    for user, stype, url in SERVICES:
        u = idn.find_user(user, domain_id=dom.id) or idn.create_user(name=user, password=user, domain_id=dom.id)
        idn.assign_project_role_to_user(svc, u, admin_role)
        idn.assign_project_role_to_user(svc, u, service_role)
        s = next((x for x in idn.services() if x.type == stype), None) or idn.create_service(type=stype, name=user)
        have = {e.interface for e in idn.endpoints(service_id=s.id)}
        for iface in ("public", "internal", "admin"):
            if iface not in have:
                idn.create_endpoint(service_id=s.id, interface=iface, url=url, region_id="RegionOne")
        print("registered", stype, url)


if __name__ == "__main__":
    main(sys.argv[1])
