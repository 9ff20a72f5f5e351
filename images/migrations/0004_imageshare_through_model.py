# Image.shared_with gets a through model, ImageShare, so a share can wait for the receiving tenant's consent
# (pending, accepted, rejected). The table Django made for the plain many-to-many field becomes the new
# model's table, rows kept: the state changes first, then the table is renamed and the new columns added.

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("images", "0003_replica_cloud_image_id"),
        ("portal", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="ImageShare",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("image", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to="images.image")),
                        ("tenant", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to="portal.tenant")),
                    ],
                    options={"db_table": "images_image_shared_with", "unique_together": {("image", "tenant")}},
                ),
                migrations.AlterField(
                    model_name="image",
                    name="shared_with",
                    field=models.ManyToManyField(
                        blank=True,
                        help_text="Tenants the image is offered to, whatever their answer: see each share's status.",
                        related_name="shared_images",
                        through="images.ImageShare",
                        to="portal.tenant",
                        verbose_name="shared with",
                    ),
                ),
            ],
            database_operations=[],
        ),
        migrations.AlterModelTable(name="imageshare", table=None),
        migrations.AlterModelOptions(
            name="imageshare",
            options={
                "ordering": ["-created_at", "-id"],
                "verbose_name": "image share",
                "verbose_name_plural": "image shares",
            },
        ),
        migrations.AlterField(
            model_name="imageshare",
            name="image",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="shares",
                to="images.image",
                verbose_name="image",
            ),
        ),
        migrations.AlterField(
            model_name="imageshare",
            name="tenant",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="image_shares",
                to="portal.tenant",
                verbose_name="receiving tenant",
            ),
        ),
        migrations.AddField(
            model_name="imageshare",
            name="reference",
            field=models.CharField(
                default="",
                help_text="The id or slug the owner named the tenant by.",
                max_length=100,
                verbose_name="tenant as named",
            ),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="imageshare",
            name="status",
            field=models.CharField(
                choices=[("pending", "Pending"), ("accepted", "Accepted"), ("rejected", "Rejected")],
                default="pending",
                max_length=8,
                verbose_name="status",
            ),
        ),
        migrations.AddField(
            model_name="imageshare",
            name="requested_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="imageshare",
            name="decided_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="imageshare",
            name="created_at",
            field=models.DateTimeField(auto_now_add=True, default=django.utils.timezone.now, verbose_name="shared"),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="imageshare",
            name="decided_at",
            field=models.DateTimeField(blank=True, null=True, verbose_name="answered"),
        ),
    ]
