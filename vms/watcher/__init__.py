"""The host watcher (``manage.py watch_hosts``): libvirt domain events, periodic reconciles and cloud polls
written into the database (``loop``), and the guests' metrics it samples (``metrics``)."""

from vms.watcher.loop import HostWatcher

__all__ = ["HostWatcher"]
