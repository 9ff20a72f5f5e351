"""/api/v1/: every app's API routes on one router, plus the OpenAPI schema and its viewers (served offline)."""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from images.api import views as images_views
from portal.api import docs
from portal.api import views as portal_views
from vms.api import (
    clouds,
    flavors,
    hosts,
    instances,
    keypairs,
    networks,
    notifications,
    operations,
    security_groups,
)

router = DefaultRouter()
router.register("tenants", portal_views.TenantViewSet, basename="tenant")
router.register("memberships", portal_views.MembershipViewSet, basename="membership")
router.register("quotas", portal_views.QuotaViewSet, basename="quota")
router.register("tokens", portal_views.ApiTokenViewSet, basename="apitoken")
router.register("audit-events", portal_views.AuditEventViewSet, basename="auditevent")
router.register("flavors", flavors.FlavorViewSet, basename="flavor")
router.register("operations", operations.OperationViewSet, basename="operation")
router.register("notifications", notifications.NotificationViewSet, basename="notification")
router.register("instances", instances.InstanceViewSet, basename="instance")
router.register("hosts", hosts.HostViewSet, basename="host")
router.register("unmanaged-domains", hosts.UnmanagedDomainViewSet, basename="unmanageddomain")
router.register("cloud-projects", clouds.CloudProjectViewSet, basename="cloudproject")
router.register("cloud-flavors", clouds.CloudFlavorViewSet, basename="cloudflavor")
router.register("placement-rules", clouds.PlacementRuleViewSet, basename="placementrule")
router.register("keypairs", keypairs.KeypairViewSet, basename="keypair")
router.register("networks", networks.NetworkViewSet, basename="network")
router.register("security-groups", security_groups.SecurityGroupViewSet, basename="securitygroup")
router.register("security-group-rules", security_groups.SecurityGroupRuleViewSet, basename="securitygrouprule")
router.register("images", images_views.ImageViewSet, basename="image")
router.register("image-shares", images_views.ImageShareViewSet, basename="imageshare")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", docs.SwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("redoc/", docs.RedocView.as_view(url_name="api-schema"), name="api-redoc"),
    path("", include(router.urls)),
    # Last: anything else under /api/v1/ is a problem+json 404, not the HTML error page.
    re_path(r"^[\s\S]*/$", portal_views.not_found, name="api-not-found"),
]
