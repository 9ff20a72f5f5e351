from django.urls import path

from vms import views

urlpatterns = [
    path("flavors/", views.flavor_list, name="flavors"),
    path("instances/", views.instance_list, name="instances"),
    path("instances/launch/", views.instance_launch, name="instance_launch"),
    path("instances/bulk/", views.instance_bulk, name="instance_bulk"),
    path("instances/<int:pk>/", views.instance_detail, name="instance_detail"),
    path("instances/<int:pk>/action/", views.instance_action, name="instance_action"),
    path("instances/<int:pk>/delete/", views.instance_delete, name="instance_delete"),
    path("instances/<int:pk>/resize/", views.instance_resize, name="instance_resize"),
    path("instances/<int:pk>/resources/", views.instance_resources, name="instance_resources"),
    path("instances/<int:pk>/disks/", views.instance_disk_attach, name="instance_disk_attach"),
    path("instances/<int:pk>/disks/<int:disk_pk>/detach/", views.instance_disk_detach, name="instance_disk_detach"),
    path("instances/<int:pk>/snapshots/", views.instance_snapshot_create, name="instance_snapshot_create"),
    path(
        "instances/<int:pk>/snapshots/<int:snapshot_pk>/revert/",
        views.instance_snapshot_revert,
        name="instance_snapshot_revert",
    ),
    path(
        "instances/<int:pk>/snapshots/<int:snapshot_pk>/delete/",
        views.instance_snapshot_delete,
        name="instance_snapshot_delete",
    ),
    path("instances/<int:pk>/capture/", views.instance_capture, name="instance_capture"),
    path("instances/<int:pk>/console/", views.instance_console, name="instance_console"),
    path("instances/<int:pk>/console/ticket/", views.instance_console_ticket, name="instance_console_ticket"),
    path("hosts/", views.host_list, name="hosts"),
    path("hosts/<int:pk>/refresh/", views.host_refresh, name="host_refresh"),
]

from vms import keypair_views  # noqa: E402

urlpatterns += [
    path("keypairs/", keypair_views.keypair_list, name="keypairs"),
    path("keypairs/import/", keypair_views.keypair_import, name="keypair_import"),
    path("keypairs/generate/", keypair_views.keypair_generate, name="keypair_generate"),
    path("keypairs/<int:pk>/delete/", keypair_views.keypair_delete, name="keypair_delete"),
    path("networks/", keypair_views.network_list, name="networks"),
]
