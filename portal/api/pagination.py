"""Page-number pagination whose query parameters are checked and documented with their bounds."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination


class StandardPagination(PageNumberPagination):
    """``?page=N&page_size=M``: N from 1, M from 1 to ``max_page_size``.

    DRF's own class silently replaces a page size it cannot read (``abc``, ``0``, empty) by the default and
    clamps one over the maximum; here such a request is refused (400), as the schema says."""

    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or not 1 <= value <= self.max_page_size or raw.strip() != raw:
            raise ValidationError(
                {
                    self.page_size_query_param: [
                        _("The page size is a whole number from 1 to %(max)d.") % {"max": self.max_page_size}
                    ]
                }
            )
        return value

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1}
            elif parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
        return parameters
