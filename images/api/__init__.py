"""REST API of the image catalogue; its routes are registered on the /api/v1/ router in portal/api/urls.py."""
