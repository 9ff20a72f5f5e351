"""REST API of the compute app; its routes are registered on the /api/v1/ router in portal/api/urls.py."""
