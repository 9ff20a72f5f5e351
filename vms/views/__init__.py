"""Dashboard pages of the compute app, one module per resource (the URLs are in ``vms.urls``)."""
