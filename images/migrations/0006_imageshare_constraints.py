# One share per image and reference, and per image and receiving tenant (shares naming no tenant excepted).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("images", "0005_existing_shares_stay_accepted")]

    operations = [
        migrations.AlterUniqueTogether(name="imageshare", unique_together=set()),
        migrations.AddConstraint(
            model_name="imageshare",
            constraint=models.UniqueConstraint(fields=("image", "reference"), name="imageshare_unique_reference"),
        ),
        migrations.AddConstraint(
            model_name="imageshare",
            constraint=models.UniqueConstraint(fields=("image", "tenant"), name="imageshare_unique_tenant"),
        ),
    ]
