# Honest names: a host's version field holds libvirt's version or a cloud's Nova microversion; an instance's
# domain_name is its libvirt domain's or Nova server's name. The data stays as it is.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("vms", "0008_openstack_clouds"),
    ]

    operations = [
        migrations.RenameField(model_name="host", old_name="libvirt_version", new_name="backend_version"),
        migrations.AlterField(
            model_name="host",
            name="backend_version",
            field=models.CharField(
                blank=True,
                help_text="libvirt's version, or a cloud's Nova API microversion.",
                max_length=32,
                verbose_name="version",
            ),
        ),
        migrations.AlterField(
            model_name="instance",
            name="domain_name",
            field=models.CharField(
                blank=True,
                help_text="The libvirt domain's name, or the Nova server's name, on its host.",
                max_length=255,
                verbose_name="name on the host",
            ),
        ),
    ]
