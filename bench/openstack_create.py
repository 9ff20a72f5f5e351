"""Benchmark: server create → ACTIVE through the OpenStack driver vs. plain openstacksdk.

    scripts/devcloud/up.sh
    .venv/bin/python bench/openstack_create.py [--rounds 9] [--poll 0.2] [--clouds var/devcloud/clouds.yaml]

Both sides boot the same flavor and image with ``networks='none'`` in the same Keystone project, with a
connection scoped to that project that is already logged in, and poll ``GET /servers/{id}`` every
``--poll`` seconds until ACTIVE (the driver: ``create`` + ``wait_for``; openstacksdk: ``create_server`` +
``wait_for_server``). Rounds alternate driver/openstacksdk after one unmeasured warm-up of each; each
server is deleted (untimed) before the next round. Prints the medians and the ratio (goal ≤ 1.10);
nothing is asserted. Everything is named ``lcbench-<random>…`` and removed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import openstack  # noqa: E402

from portal.backends.openstack import OpenStackAuth, OpenStackDriver  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--clouds", type=Path, default=ROOT / "var" / "devcloud" / "clouds.yaml")
    parser.add_argument("--image", type=Path, default=ROOT / "var" / "test-media" / "tiny.qcow2")
    args = parser.parse_args()

    cloud = yaml.safe_load(args.clouds.read_text())["clouds"]["devcloud-admin"]
    a = cloud["auth"]
    driver = OpenStackDriver(
        OpenStackAuth(
            auth_url=a["auth_url"],
            username=a["username"],
            password=a["password"],
            project_name=a["project_name"],
            region_name=cloud["region_name"],
        ),
        poll=args.poll,
    )
    prefix = f"lcbench-{uuid.uuid4().hex[:8]}"
    project = driver.ensure_project(name=prefix, description="labcloud benchmark")
    flavor = driver.ensure_flavor(
        name=f"{prefix}-f", vcpus=1, ram_mib=128, disk_gib=1, is_public=False, project_ids=[project.id]
    )
    image = driver.upload_image(path=args.image, name=f"{prefix}-img", project_id=project.id)
    sdk = openstack.connect(
        load_yaml_config=False,
        load_envvars=False,
        auth_url=a["auth_url"],
        username=a["username"],
        password=a["password"],
        user_domain_name="Default",
        project_id=project.id,
        region_name=cloud["region_name"],
    )
    sdk.authorize()
    driver.project_conn(project.id)  # log in once, as a long-running worker would have

    def with_driver(n: int) -> str:
        server_id = driver.create(project_id=project.id, name=f"{prefix}-d{n}", flavor_id=flavor.id, image_id=image.id)
        driver.wait_for(server_id, states=("running",), timeout=300)
        return server_id

    def with_sdk(n: int) -> str:
        server = sdk.compute.create_server(
            name=f"{prefix}-s{n}", flavor_id=flavor.id, image_id=image.id, networks="none"
        )
        sdk.compute.wait_for_server(server, status="ACTIVE", interval=args.poll, wait=300)
        return server.id

    times: dict[str, list[float]] = {"driver": [], "openstacksdk": []}
    try:
        for n in range(args.rounds + 1):
            for label, fn in (("driver", with_driver), ("openstacksdk", with_sdk)):
                t0 = time.perf_counter()
                server_id = fn(n)
                elapsed = time.perf_counter() - t0
                driver.delete(server_id)
                if n:  # round 0 warms up both
                    times[label].append(elapsed)
        d, s = statistics.median(times["driver"]), statistics.median(times["openstacksdk"])
        print(f"create->ACTIVE over {args.rounds} rounds (poll {args.poll}s), networks='none', fake compute driver")
        for label, values in times.items():
            print(f"  {label:13s} median {statistics.median(values):.3f}s  " + " ".join(f"{v:.2f}" for v in values))
        print(f"  ratio driver/openstacksdk: {d / s:.3f} (goal <= 1.10)")
    finally:
        for server in driver.list_servers(project_id=project.id):
            driver.delete(server.id)
        driver.delete_image(image_id=image.id)
        driver.delete_flavor(flavor_id=flavor.id)
        driver.delete_project(project_id=project.id)
        sdk.close()
        driver.close()


if __name__ == "__main__":
    main()
