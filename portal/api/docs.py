"""The API's two viewers (Swagger UI at /api/v1/docs/, ReDoc at /api/v1/redoc/), served from the portal only.

Their scripts and styles come from drf-spectacular-sidecar's static files and their fonts are the system's;
a Content-Security-Policy keeps whatever a viewer's bundle would still fetch from elsewhere (ReDoc's footer
logo comes from cdn.redoc.ly) from leaving the browser.
"""

from __future__ import annotations

from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView

# 'unsafe-inline': both viewers start from an inline script and style their components inline.
# blob: ReDoc runs its search in a worker made from a blob. data: inline icons.
VIEWER_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "frame-ancestors 'self'",
    ]
)


class _SameOriginOnly:
    # finalize_response, not get: drf-spectacular keeps the viewers out of the schema through their get().
    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Content-Security-Policy"] = VIEWER_CSP
        return response


class SwaggerView(_SameOriginOnly, SpectacularSwaggerView):
    pass


class RedocView(_SameOriginOnly, SpectacularRedocView):
    pass
