"""Serializers that take JSON values of the declared type only.

DRF reads ``"name": 5`` as ``"5"``, ``"enabled": 0`` as ``false``, ``"count": "2"`` as ``2`` and a list field
given an object as its keys: values the OpenAPI schema declares invalid. Every API serializer derives from
``StrictSerializer`` or ``StrictModelSerializer``, which refuse a JSON value of another type (400, "Incorrect
type") before the fields read it, so the API accepts exactly what its schema describes.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers
from rest_framework.relations import ManyRelatedField, PrimaryKeyRelatedField

_EXPECTED = {
    "string": _("Incorrect type. Expected a string."),
    "boolean": _("Incorrect type. Expected a boolean."),
    "integer": _("Incorrect type. Expected an integer."),
    "number": _("Incorrect type. Expected a number."),
    "array": _("Incorrect type. Expected a list."),
    "object": _("Incorrect type. Expected an object."),
}


def _json_type_error(field: serializers.Field, value) -> str | None:
    """The message for ``value`` when its JSON type is not the one ``field`` documents, else None."""
    if value is None or getattr(field, "checks_json_type", False):
        return None  # allow_null and required are the field's own business; some fields take several types
    if isinstance(field, serializers.BooleanField):
        return None if isinstance(value, bool) else "boolean"
    if isinstance(field, serializers.IntegerField):
        return None if isinstance(value, int) and not isinstance(value, bool) else "integer"
    if isinstance(field, serializers.FloatField | serializers.DecimalField):
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "number"
    if isinstance(field, serializers.ChoiceField | serializers.CharField):
        if isinstance(field, serializers.ChoiceField) and not all(isinstance(key, str) for key in field.choices):
            return None
        return None if isinstance(value, str) else "string"
    if isinstance(field, PrimaryKeyRelatedField) and field.pk_field is None:
        # every model of the API has an integer primary key, documented as an integer
        return None if isinstance(value, int) and not isinstance(value, bool) else "integer"
    if isinstance(field, ManyRelatedField | serializers.ListField | serializers.ListSerializer):
        return None if isinstance(value, list) else "array"
    if isinstance(field, serializers.DictField | serializers.Serializer):
        return None if isinstance(value, Mapping) else "object"
    return None


class StrictJsonTypesMixin:
    def to_internal_value(self, data):
        if not isinstance(data, Mapping):
            return super().to_internal_value(data)
        type_errors = {}
        for field in self._writable_fields:
            if field.source == "*" or field.field_name not in data:
                continue
            expected = _json_type_error(field, data[field.field_name])
            if expected is not None:
                type_errors[field.field_name] = [str(_EXPECTED[expected])]
        if not type_errors:
            return super().to_internal_value(data)
        # Report the other fields' errors too, as one answer, in the fields' order.
        others = {}
        try:
            super().to_internal_value({key: value for key, value in data.items() if key not in type_errors})
        except serializers.ValidationError as exc:
            if isinstance(exc.detail, Mapping):
                others = dict(exc.detail)
        merged = {**others, **type_errors}
        order = list(self.fields)
        ordered = {name: merged[name] for name in sorted(merged, key=lambda n: order.index(n) if n in order else -1)}
        raise serializers.ValidationError(ordered, code="invalid")


class StrictSerializer(StrictJsonTypesMixin, serializers.Serializer):
    pass


class StrictModelSerializer(StrictJsonTypesMixin, serializers.ModelSerializer):
    pass
