"""Consoles in the browser: one-time tokens (``tokens``), the VNC websocket proxy that claims them (``proxy``,
``manage.py consoleproxy``) and the serial console over the portal's own websocket (``serial``)."""
