from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class VmsConfig(AppConfig):
    name = "vms"
    verbose_name = _("Compute")

    def ready(self) -> None:
        from images.capture import register_capture_finished
        from portal.selectors import register_usage_provider
        from vms import signals  # noqa: F401  (quota and flavor changes reach the clouds)
        from vms.compute.builtin import register_builtin_adapters
        from vms.lifecycle import capture_finished
        from vms.operations import register_operation_labels
        from vms.security_groups import security_group_usage
        from vms.selectors import instance_usage

        register_usage_provider(instance_usage)
        register_usage_provider(security_group_usage)
        register_builtin_adapters()
        register_capture_finished(capture_finished)
        register_operation_labels({"host.drain": _("Host drain"), "host.evacuate": _("Host evacuation")})
