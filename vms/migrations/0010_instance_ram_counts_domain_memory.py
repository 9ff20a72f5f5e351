"""Instances count the memory their domain can use (issue #17, item 3).

Until now, lowering an instance's RAM lowered only its row and the balloon target: the domain's
``<memory>`` stayed at least the flavor's (the domain was always defined with the larger of the two),
and a guest that ignores the balloon keeps all of it. Rows of libvirt instances the portal made
(not adopted) that count less RAM than their flavor get the flavor's RAM back, which is the
``<memory>`` their domain was defined with; their snapshots likewise, so that a revert still
matches. From now on ``<memory>`` is the row's RAM exactly. The reverse is a no-op.
"""

from django.db import migrations
from django.db.models import F


def count_domain_memory(apps, schema_editor):
    Instance = apps.get_model("vms", "Instance")
    Snapshot = apps.get_model("vms", "Snapshot")
    lowered = Instance.objects.filter(host__kind="libvirt", adopted=False, ram_mib__lt=F("flavor__ram_mib"))
    for instance in lowered.select_related("flavor"):
        Instance.objects.filter(pk=instance.pk).update(ram_mib=instance.flavor.ram_mib)
    snapshots = Snapshot.objects.filter(
        instance__host__kind="libvirt", instance__adopted=False, ram_mib__lt=F("instance__flavor__ram_mib")
    )
    for snapshot in snapshots.select_related("instance__flavor"):
        Snapshot.objects.filter(pk=snapshot.pk).update(ram_mib=snapshot.instance.flavor.ram_mib)


class Migration(migrations.Migration):
    dependencies = [("vms", "0009_host_backend_version_honest_names")]

    operations = [migrations.RunPython(count_domain_memory, migrations.RunPython.noop)]
