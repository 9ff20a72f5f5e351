# A copy in a cloud's Glance was recorded with pool "glance" and the Glance image id as its "volume": it now has
# a field of its own (cloud_image_id), and pool and volume stay for libvirt hosts' storage volumes.

from django.db import migrations, models


def glance_ids_to_their_field(apps, schema_editor):
    replica = apps.get_model("images", "ImageReplica")
    for row in replica.objects.filter(host__kind="openstack"):
        row.cloud_image_id = row.volume if row.pool == "glance" else row.cloud_image_id
        row.pool, row.volume = "", ""
        row.save(update_fields=["cloud_image_id", "pool", "volume"])


def glance_ids_back(apps, schema_editor):
    replica = apps.get_model("images", "ImageReplica")
    for row in replica.objects.filter(host__kind="openstack"):
        row.pool, row.volume = "glance", row.cloud_image_id
        row.save(update_fields=["pool", "volume"])


class Migration(migrations.Migration):
    dependencies = [
        ("images", "0002_imagereplica_updated_at"),
        ("vms", "0009_host_backend_version_honest_names"),
    ]

    operations = [
        migrations.AddField(
            model_name="imagereplica",
            name="cloud_image_id",
            field=models.CharField(blank=True, help_text="Glance image id.", max_length=64, verbose_name="cloud image id"),
        ),
        migrations.AlterField(
            model_name="imagereplica",
            name="pool",
            field=models.CharField(blank=True, max_length=100, verbose_name="storage pool"),
        ),
        migrations.AlterField(
            model_name="imagereplica",
            name="volume",
            field=models.CharField(blank=True, max_length=200, verbose_name="volume"),
        ),
        migrations.RunPython(glance_ids_to_their_field, glance_ids_back),
    ]
