"""Base classes for every app's API: the problem+json-aware schema and the viewset mixin."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from django.utils.translation import gettext_lazy as _
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.parsers import JSONParser
from rest_framework.relations import ManyRelatedField

from portal.access import VIEW, access_by_id, is_cloud_admin
from portal.api.exceptions import PROBLEM_CONTENT_TYPE
from portal.api.ordering import StrictOrderingFilter
from portal.api.serializers import ProblemSerializer
from portal.middleware import client_ip as request_ip

PROBLEM_DESCRIPTIONS = {
    400: _("Invalid request (field errors in `errors`)."),
    401: _("Not authenticated, or the token is invalid, expired or revoked."),
    403: _("Not allowed (role, read-only token or quota)."),
    404: _("Not found, or not visible to you."),
    409: _("Conflicts with the current state (duplicate name, last tenant admin, still in use…)."),
    413: _("The request body is larger than the portal accepts."),
    415: _("The request body is not of a media type the operation reads."),
    429: _("Too many requests."),
}


class ProblemAutoSchema(AutoSchema):
    """drf-spectacular schema that also documents the problem+json answers an operation can give."""

    def _resolve_path_parameters(self, variables):
        parameters = super()._resolve_path_parameters(variables)
        for parameter in parameters:
            # ids matched by ApiViewSetMixin.lookup_value_regex are positive integers
            if parameter["schema"].get("pattern") == "^[0-9]+$":
                parameter["schema"] = {"type": "integer", "minimum": 1}
        return parameters

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if isinstance(field, serializers.IPAddressField) and "format" not in schema and direction == "request":
            # DRF's field takes both families (drf-spectacular then documents a plain string)
            schema = {k: v for k, v in schema.items() if k not in {"minLength", "maxLength"}}
            schema["anyOf"] = [{"format": "ipv4"}, {"format": "ipv6"}]
            if any(getattr(validator, "refuses_unspecified_and_multicast", False) for validator in field.validators):
                schema["not"] = {
                    "anyOf": [{"pattern": "^[0:.]+$"}, {"pattern": "^(22[4-9]|23[0-9])\\."}, {"pattern": "^[fF][fF]"}]
                }
        if isinstance(field, ManyRelatedField) and not field.allow_empty and direction == "request":
            schema["minItems"] = 1
        return schema

    def _map_basic_serializer(self, serializer, direction):
        schema = super()._map_basic_serializer(serializer, direction)
        minimum = getattr(serializer, "schema_min_properties", None)
        if minimum and direction == "request":
            schema["minProperties"] = minimum
        return schema

    def problem_statuses(self) -> list[int]:
        method = self.method.upper()
        statuses = {401, 429}
        if method == "GET" and self._is_list_view():
            statuses |= {400, 404}  # bad filter values; a page past the end
        elif "{" in self.path:
            statuses.add(404)
        if method == "GET" and self.get_override_parameters():
            statuses.add(400)  # a declared query parameter with a value it does not take
        if method in {"POST", "PUT", "PATCH"}:
            statuses |= {400, 403, 409, 413, 415}
        elif method == "DELETE":
            statuses |= {403, 409}
        return sorted(statuses)

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for status_code in self.problem_statuses():
            key = str(status_code)
            if key not in responses:
                response = OpenApiResponse(
                    response=ProblemSerializer, description=str(PROBLEM_DESCRIPTIONS[status_code])
                )
                responses[key] = self._get_response_for_code(response, key, [PROBLEM_CONTENT_TYPE], direction)
        return responses


class ApiViewSetMixin:
    """Common behaviour of the API viewsets: JSON bodies, numeric ids, the access gate for writes."""

    parser_classes = [JSONParser]
    lookup_value_regex = r"[0-9]+"
    filter_backends = [DjangoFilterBackend, StrictOrderingFilter]
    #: the model whose ``objects.restrict(user, action)`` decides what may be changed or deleted
    model = None

    @property
    def client_ip(self) -> str | None:
        return request_ip(self.request)

    def restricted(self, action: str):
        return self.model.objects.restrict(self.request.user, action)

    def get_object(self):
        return self.get_object_for(VIEW)

    def get_object_for(self, action: str):
        """The object of the URL if ``action`` is allowed on it: 404 when invisible, 403 when only visible
        (``portal.access.access_by_id``, the rule of every page and consumer too)."""
        pk = str(self.kwargs.get(self.lookup_url_kwarg or self.lookup_field, ""))
        try:
            obj = access_by_id(
                self.get_queryset(), user=self.request.user, pk=pk, action=action, field=self.lookup_field
            )
        except Http404:
            raise NotFound() from None
        except DjangoPermissionDenied:
            self.permission_denied(self.request, message=_("You are not allowed to do this."))
        self.check_object_permissions(self.request, obj)
        return obj

    def require_cloud_admin(self, message) -> None:
        if not is_cloud_admin(self.request.user):
            self.permission_denied(self.request, message=message)
