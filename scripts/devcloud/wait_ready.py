"""Wait until Nova can schedule: the compute service reports "up" and its resource provider is in Placement.

Run by up.sh with the keystone venv's Python: `wait_ready.py CLOUDS_YAML [TIMEOUT_SECONDS]`.
"""

import sys
import time

import openstack
import yaml


def main(clouds_yaml: str, timeout: float) -> None:
    with open(clouds_yaml) as fh:
        cloud = yaml.safe_load(fh)["clouds"]["devcloud-admin"]
    conn = openstack.connect(load_yaml_config=False, **cloud["auth"], region_name=cloud["region_name"])
    deadline = time.monotonic() + timeout
    while True:
        computes = [s for s in conn.compute.services(binary="nova-compute") if s.host == "devcloud-compute"]
        up = bool(computes) and computes[0].state == "up" and computes[0].status == "enabled"
        rps = list(conn.placement.resource_providers(name="devcloud-compute")) if up else []
        if up and rps:
            print("compute up, resource provider", rps[0].id)
            return
        if time.monotonic() > deadline:
            sys.exit(f"compute not ready after {timeout:.0f}s: services={computes} providers={rps}")
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 180)
