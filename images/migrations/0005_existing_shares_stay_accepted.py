# Shares made before consent existed were in effect at once: they stay accepted, named by the tenant's slug.
# Going back, the old many-to-many field knows no status: shares nobody accepted are deleted rather than
# handed to tenants that never agreed.

from django.db import migrations
from django.utils import timezone


def existing_shares_accepted(apps, schema_editor):
    share = apps.get_model("images", "ImageShare")
    now = timezone.now()
    for row in share.objects.select_related("tenant"):
        row.reference, row.status, row.decided_at = row.tenant.slug, "accepted", now
        row.save(update_fields=["reference", "status", "decided_at"])


def unaccepted_shares_removed(apps, schema_editor):
    share = apps.get_model("images", "ImageShare")
    share.objects.exclude(status="accepted", tenant__isnull=False).delete()


class Migration(migrations.Migration):
    dependencies = [("images", "0004_imageshare_through_model")]

    operations = [migrations.RunPython(existing_shares_accepted, unaccepted_shares_removed)]
