"""Quota of snapshot storage (issue #17, item 5): existing tenants get the default (QUOTA_SNAPSHOT_MIB)."""

import django.core.validators
from django.conf import settings
from django.db import migrations, models


def default_limit(apps, schema_editor):
    Quota = apps.get_model("portal", "Quota")
    Quota.objects.update(snapshot_mib=settings.LABCLOUD_DEFAULT_QUOTA["snapshot_mib"])


class Migration(migrations.Migration):
    dependencies = [("portal", "0002_loginfailure")]

    operations = [
        migrations.AddField(
            model_name="quota",
            name="snapshot_mib",
            field=models.IntegerField(
                default=-1,
                help_text="-1 means unlimited.",
                validators=[django.core.validators.MinValueValidator(-1)],
                verbose_name="snapshot storage (MiB)",
            ),
            preserve_default=False,
        ),
        migrations.RunPython(default_limit, migrations.RunPython.noop),
    ]
