from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class VmsConfig(AppConfig):
    name = "vms"
    verbose_name = _("Compute")

    def ready(self) -> None:
        from portal.selectors import register_usage_provider
        from vms.selectors import instance_usage

        register_usage_provider(instance_usage)
        from vms import signals  # noqa: F401  (quota and flavor changes reach the clouds)
