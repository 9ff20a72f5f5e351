"""drf-spectacular post-processing: rules the API applies to every input, written into the schema.

- Text never holds a NUL character (Django's form and DRF's char fields refuse it): every free string of a
  request body or a query parameter says so with a pattern.
- A choice or date filter given an empty value (``?status=``, ``?created_at_after=``) filters nothing, as an
  HTML form sends it: the empty string is one of its values.
"""

from __future__ import annotations

NO_NUL = "^[^\\u0000]*$"


def _forbid_nul(schema) -> None:
    if isinstance(schema, list):
        for item in schema:
            _forbid_nul(item)
        return
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "string" and not ({"enum", "format", "pattern", "anyOf"} & schema.keys()):
        schema["pattern"] = NO_NUL
    for key in ("properties", "patternProperties"):
        for sub in (schema.get(key) or {}).values():
            _forbid_nul(sub)
    for key in ("items", "additionalProperties", "oneOf", "anyOf", "allOf"):
        if key in schema:
            _forbid_nul(schema[key])


def declare_input_rules(result, generator, request, public):
    components = result.get("components", {}).get("schemas", {})
    for name, schema in components.items():
        if name.endswith("Request"):  # COMPONENT_SPLIT_REQUEST: the input half of each serializer
            _forbid_nul(schema)
    for path in result.get("paths", {}).values():
        for operation in path.values():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                if parameter.get("in") != "query":
                    continue
                schema = parameter.get("schema", {})
                if schema.get("type") == "string" and "enum" in schema and "" not in schema["enum"]:
                    schema["enum"] = [*schema["enum"], ""]
                elif schema.get("type") == "string" and schema.get("format") in {"date-time", "date"}:
                    # an empty bound is no bound
                    parameter["schema"] = {"anyOf": [schema, {"type": "string", "enum": [""]}]}
                _forbid_nul(schema)
            for media in (operation.get("requestBody") or {}).get("content", {}).values():
                _forbid_nul(media.get("schema"))
    return result
