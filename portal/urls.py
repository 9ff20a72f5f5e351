from django.contrib import admin
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path

from portal.prometheus import metrics_view

handler400 = "portal.views.bad_request"  # problem+json under /api/ (413 for a body over Django's in-memory limit)
handler500 = "portal.views.server_error"  # problem+json under /api/, 503 while the database or broker is away


def favicon(request):
    """``/favicon.ico``, which browsers and tools ask for on pages without a ``<link rel="icon">`` (the API's
    JSON, the schema): the portal's SVG icon."""
    return redirect(static("portal/favicon.svg"), permanent=True)


urlpatterns = [
    path("favicon.ico", favicon),
    path("admin/", admin.site.urls),
    path("i18n/", include("django.conf.urls.i18n")),
    path("api/v1/", include("portal.api.urls")),
    path("metrics", metrics_view, name="prometheus-metrics"),
    path("", include("portal.dashboard_urls")),
    path("", include("vms.urls")),
    path("", include("images.urls")),
]
