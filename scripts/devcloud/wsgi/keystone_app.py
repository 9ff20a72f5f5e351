"""gunicorn entry point for Keystone: drop gunicorn's argv so oslo.config does not try to parse it."""

import sys

sys.argv = sys.argv[:1]

from keystone.wsgi.api import application  # noqa: E402

__all__ = ["application"]
