"""Benchmark: create → ACTIVE through the portal, through its OpenStack driver, and with plain openstacksdk.

    scripts/devcloud/up.sh
    .venv/bin/python bench/openstack_create.py [--rounds 9] [--poll 0.2] [--clouds var/devcloud/clouds.yaml]

* portal: ``vms.lifecycle.launch_instances`` for a tenant whose placement rule sends it to the cloud,
  until the instance row is RUNNING: quota reservation, placement, the operation, and the launch task
  (project, flavor and image looked up, the server created, Nova polled until ACTIVE, the row updated).
  The Celery task runs eagerly in this process, exactly as the worker runs it (the queue hop is not
  counted). The tenant's project, the flavor and the image are made by the warm-up launch.
* driver: ``OpenStackDriver.create`` + ``wait_for`` in the same project.
* openstacksdk: ``create_server`` + ``wait_for_server``.

All boot the same flavor and image with ``networks='none'``, with connections already logged in, and
poll ``GET /servers/{id}`` every ``--poll`` seconds. Rounds alternate the three after one unmeasured
warm-up of each; each server is deleted (untimed) before the next round. Prints the medians and the
ratios to openstacksdk (goal ≤ 1.10); nothing is asserted. Everything is named ``lcbench-<random>…``
and removed at the end; the portal's rows live in a throw-away test database.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import os  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
import django  # noqa: E402

django.setup()

import openstack  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from portal.backends.openstack import OpenStackAuth, OpenStackDriver  # noqa: E402


class Portal:
    """A tenant whose instances go to the devcloud, in a throw-away database."""

    def __init__(self, auth: dict, region: str, prefix: str, image_file: Path) -> None:
        import tempfile

        from django.contrib.auth import get_user_model

        from images.models import Image
        from portal.celery import app as celery_app
        from portal.models import Membership, Quota, Tenant
        from vms.compute.openstack import login
        from vms.models import Flavor, Host, PlacementRule

        celery_app.conf.task_always_eager = True
        settings.LABCLOUD_DOMAIN_PREFIX = f"{prefix}-"
        settings.LABCLOUD_IMAGE_STORE = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/var/tmp"))
        self.host = Host.objects.create(
            name="bench-cloud",
            kind=Host.Kind.OPENSTACK,
            auth_url=auth["auth_url"],
            region=region,
            credentials=login.encrypt_credentials({k: auth[k] for k in ("username", "password", "project_name")}),
            state=Host.State.UP,
        )
        self.tenant = Tenant.objects.create(name="bench", slug="bench")
        Quota.objects.create(
            tenant=self.tenant,
            **dict.fromkeys(
                ("instances", "vcpus", "ram_mib", "disk_gib", "snapshots", "images", "image_storage_gib"), -1
            ),
        )
        self.user = get_user_model().objects.create_user("bench-user")
        Membership.objects.create(user=self.user, tenant=self.tenant, role="member")
        self.flavor = Flavor.objects.create(name="p", vcpus=1, ram_mib=128, disk_gib=1)
        self.image = Image.objects.create(
            tenant=self.tenant,
            name="tiny",
            kind="disk",
            disk_format="qcow2",
            stored_format="qcow2",
            status=Image.Status.ACTIVE,
            size=image_file.stat().st_size,
            virtual_size=20 * 1024**2,
        )
        self.image.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image_file, self.image.path)
        PlacementRule.objects.create(tenant=self.tenant, host=self.host)
        self.n = 0

    def launch(self) -> str:
        """One launch until the row is RUNNING; returns the instance's pk (as text)."""
        from vms import lifecycle
        from vms.models import Instance

        self.n += 1
        result = lifecycle.launch_instances(
            actor=self.user, tenant=self.tenant, name=f"p{self.n}", flavor=self.flavor, image=self.image
        )
        instance = Instance.objects.get(pk=result.instances[0].pk)
        if instance.state != Instance.State.RUNNING:
            op = result.operations[0]
            op.refresh_from_db()
            raise SystemExit(f"portal launch ended {instance.state}: {op.error}")
        return str(instance.pk)

    def delete(self, pk: str) -> None:
        from vms import lifecycle
        from vms.models import Instance

        lifecycle.delete_instance(actor=self.user, instance=Instance.objects.get(pk=pk))
        if Instance.objects.filter(pk=pk).exists():
            raise SystemExit("portal delete did not finish")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--clouds", type=Path, default=ROOT / "var" / "devcloud" / "clouds.yaml")
    parser.add_argument("--image", type=Path, default=ROOT / "var" / "test-media" / "tiny.qcow2")
    args = parser.parse_args()
    settings.LABCLOUD_CLOUD_POLL_SECONDS = args.poll
    old_db = connection.creation.create_test_db(verbosity=0, autoclobber=True)

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

    portal = Portal(a, cloud["region_name"], prefix, args.image)

    times: dict[str, list[float]] = {"portal": [], "driver": [], "openstacksdk": []}
    removers = {"portal": portal.delete, "driver": driver.delete, "openstacksdk": driver.delete}
    try:
        for n in range(args.rounds + 1):
            for label, fn in (
                ("portal", lambda _n: portal.launch()),
                ("driver", with_driver),
                ("openstacksdk", with_sdk),
            ):
                t0 = time.perf_counter()
                made = fn(n)
                elapsed = time.perf_counter() - t0
                removers[label](made)
                if n:  # round 0 warms up all three (and makes the portal's project, flavor and image)
                    times[label].append(elapsed)
        s = statistics.median(times["openstacksdk"])
        print(
            f"create->ACTIVE over {args.rounds} rounds (poll {args.poll}s), networks='none', fake compute driver, "
            f"database {connection.vendor}"
        )
        for label, values in times.items():
            print(f"  {label:13s} median {statistics.median(values):.3f}s  " + " ".join(f"{v:.2f}" for v in values))
        for label in ("portal", "driver"):
            print(f"  ratio {label}/openstacksdk: {statistics.median(times[label]) / s:.3f} (goal <= 1.10)")
    finally:
        from vms.compute.openstack.login import forget_driver

        forget_driver(portal.host)
        for server in driver.list_servers():
            if server.name.startswith(prefix):
                driver.delete(server.id)
        for img in driver.conn.image.images():
            if (img.name or "").startswith(prefix) and img.id != image.id:
                driver.delete_image(image_id=img.id)
        for fl in driver.conn.compute.flavors(is_public="None"):
            if fl.name.startswith(prefix) and fl.id != flavor.id:
                driver.delete_flavor(flavor_id=fl.id)
        for proj in driver.conn.identity.projects():
            if proj.name.startswith(f"{prefix}-"):
                driver.delete_project(project_id=proj.id)
        connection.creation.destroy_test_db(old_db, verbosity=0)
        shutil.rmtree(settings.LABCLOUD_IMAGE_STORE, ignore_errors=True)
        for server in driver.list_servers(project_id=project.id):
            driver.delete(server.id)
        driver.delete_image(image_id=image.id)
        driver.delete_flavor(flavor_id=flavor.id)
        driver.delete_project(project_id=project.id)
        sdk.close()
        driver.close()


if __name__ == "__main__":
    main()
