"""One error format for the whole API: RFC 7807 problem+json.

{"type": "…/quota_exceeded", "title": "Quota exceeded", "status": 403,
 "detail": "Quota exceeded for vCPUs: requested 4, limit 8, currently in use 6.",
 "code": "quota_exceeded", "errors": {...field errors...}}
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from django.utils.translation import gettext as _
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from portal.services import QuotaExceeded, ServiceError

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "https://labcloud.invalid/problems/"


def problem(*, status_code: int, code: str, title: str, detail: str, **extra) -> Response:
    body = {"type": TYPE_BASE + code, "title": title, "status": status_code, "detail": detail, "code": code, **extra}
    return Response(body, status=status_code, content_type=PROBLEM_CONTENT_TYPE)


def problem_response(*, status_code: int, code: str, title: str, detail: str, **extra) -> JsonResponse:
    """The same document outside DRF's views (Django's error handlers: ``portal.views.server_error``)."""
    body = {"type": TYPE_BASE + code, "title": title, "status": status_code, "detail": detail, "code": code, **extra}
    return JsonResponse(
        body, status=status_code, content_type=PROBLEM_CONTENT_TYPE, json_dumps_params={"ensure_ascii": False}
    )


def refused_request_problem(exception: Exception) -> JsonResponse:
    """A request Django refused as suspicious (``SuspiciousOperation``), as the API says it: 413 for a body over
    ``DATA_UPLOAD_MAX_MEMORY_SIZE``, 400 otherwise (a Host header the portal does not serve)."""
    if isinstance(exception, RequestDataTooBig):
        return problem_response(
            status_code=413,
            code="too_large",
            title=_("Request too large"),
            detail=_("The request body exceeds %(limit)d bytes; send a large file in chunks.")
            % {"limit": settings.DATA_UPLOAD_MAX_MEMORY_SIZE},
        )
    return problem_response(
        status_code=400,
        code="bad_request",
        title=_("Bad request"),
        detail=_("The portal cannot read this request."),
    )


def _first_message(data) -> str:
    if isinstance(data, dict):
        for value in data.values():
            return _first_message(value)
    if isinstance(data, list) and data:
        return _first_message(data[0])
    return str(data)


def problem_exception_handler(exc, context):
    if isinstance(exc, QuotaExceeded):
        return problem(
            status_code=exc.status,
            code=exc.code,
            title=_("Quota exceeded"),
            detail=exc.message,
            resource=exc.resource,
            requested=exc.requested,
            limit=exc.limit,
            in_use=exc.in_use,
        )
    if isinstance(exc, ServiceError):
        extra = {"errors": {exc.field: [exc.message]}} if exc.field else {}
        titles = {status.HTTP_409_CONFLICT: _("Conflict"), status.HTTP_403_FORBIDDEN: _("Not allowed")}
        title = str(getattr(exc, "title", "") or titles.get(exc.status, _("Invalid request")))
        return problem(status_code=exc.status, code=exc.code, title=title, detail=exc.message, **extra)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        body = problem(
            status_code=response.status_code,
            code="invalid",
            title=_("Invalid request"),
            detail=_first_message(exc.detail),
            errors=errors,
        )
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = getattr(detail, "code", None) or getattr(exc, "default_code", "error")
        body = problem(
            status_code=response.status_code,
            code=str(code),
            title=str(getattr(exc, "default_detail", _("Error"))),
            detail=_first_message(detail),
        )
    for header in ("WWW-Authenticate", "Retry-After", "Allow"):
        if header in response:
            body[header] = response[header]
    return body
