"""gunicorn entry point for nova-api: drop gunicorn's argv so oslo.config does not try to parse it."""

import sys

sys.argv = sys.argv[:1]

from nova.wsgi.osapi_compute import application  # noqa: E402

__all__ = ["application"]
