"""The portal's URLs plus two views that crash, for the 500 tests (portal/tests/test_api_problems.py)."""

from django.db import OperationalError
from django.urls import path

from portal.urls import handler500
from portal.urls import urlpatterns as portal_urlpatterns

__all__ = ["handler500", "urlpatterns"]


def crash(request):
    raise RuntimeError("secret backend detail: qemu+ssh://root@node1/system")


def database_away(request):
    raise OperationalError('connection to server at "127.0.0.1", port 5432 failed: Connection refused')


urlpatterns = [
    path("api/v1/crash/", crash),
    path("crash/", crash),
    path("api/v1/away/", database_away),
    path("away/", database_away),
    *portal_urlpatterns,
]
