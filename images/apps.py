from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ImagesConfig(AppConfig):
    name = "images"
    verbose_name = _("Images")

    def ready(self) -> None:
        from images.selectors import image_usage
        from portal.selectors import register_usage_provider
        from vms.operations import register_operation_labels

        register_usage_provider(image_usage)
        register_operation_labels(
            {
                "image.process": _("Image processing"),
                "image.import": _("Image import"),
                "image.capture": _("Capture"),
                "image.distribute": _("Image distribution"),
            }
        )
