"""gunicorn entry point for neutron-server's API: drop gunicorn's argv so oslo.config does not parse it.

configure_mappers(): Neutron's port listing names ``Port.port_forwardings``, a SQLAlchemy backref that
exists only once the mappers are configured; without this the first GET /v2.0/ports after a start
(nova-api asks on every server show) fails with AttributeError → 500.
"""

import sys

sys.argv = sys.argv[:1]

from neutron.wsgi.api import application  # noqa: E402
from sqlalchemy.orm import configure_mappers  # noqa: E402

configure_mappers()

__all__ = ["application"]
