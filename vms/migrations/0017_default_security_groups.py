"""Every tenant gets its ``default`` security group (all egress, ingress from the same group), and every
instance already made joins its tenant's default group, as OpenStack puts ports in ``default``."""

from django.db import migrations


def forwards(apps, schema_editor):
    Tenant = apps.get_model("portal", "Tenant")
    SecurityGroup = apps.get_model("vms", "SecurityGroup")
    SecurityGroupRule = apps.get_model("vms", "SecurityGroupRule")
    Instance = apps.get_model("vms", "Instance")
    for tenant in Tenant.objects.all():
        group, created = SecurityGroup.objects.get_or_create(tenant=tenant, name="default")
        if created:
            SecurityGroupRule.objects.create(group=group, direction="egress", protocol="any")
            SecurityGroupRule.objects.create(group=group, direction="ingress", protocol="any", remote_group=group)
        for instance in Instance.objects.filter(tenant=tenant, adopted=False):
            instance.security_groups.add(group)


class Migration(migrations.Migration):
    dependencies = [("vms", "0016_security_groups")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
