from django.urls import path

from vms.views import consoles, flavors, hosts, instances, keypairs, launch, networks

urlpatterns = [
    path("flavors/", flavors.flavor_list, name="flavors"),
    path("instances/", instances.instance_list, name="instances"),
    path("instances/launch/", launch.instance_launch, name="instance_launch"),
    path("instances/bulk/", instances.instance_bulk, name="instance_bulk"),
    path("instances/<int:pk>/", instances.instance_detail, name="instance_detail"),
    path("instances/<int:pk>/action/", instances.instance_action, name="instance_action"),
    path("instances/<int:pk>/delete/", instances.instance_delete, name="instance_delete"),
    path("instances/<int:pk>/resize/", instances.instance_resize, name="instance_resize"),
    path("instances/<int:pk>/resources/", instances.instance_resources, name="instance_resources"),
    path("instances/<int:pk>/disks/", instances.instance_disk_attach, name="instance_disk_attach"),
    path("instances/<int:pk>/disks/<int:disk_pk>/detach/", instances.instance_disk_detach, name="instance_disk_detach"),
    path("instances/<int:pk>/snapshots/", instances.instance_snapshot_create, name="instance_snapshot_create"),
    path(
        "instances/<int:pk>/snapshots/<int:snapshot_pk>/revert/",
        instances.instance_snapshot_revert,
        name="instance_snapshot_revert",
    ),
    path(
        "instances/<int:pk>/snapshots/<int:snapshot_pk>/delete/",
        instances.instance_snapshot_delete,
        name="instance_snapshot_delete",
    ),
    path("instances/<int:pk>/capture/", instances.instance_capture, name="instance_capture"),
    path("instances/<int:pk>/migrate/", instances.instance_migrate, name="instance_migrate"),
    path(
        "instances/<int:pk>/operations/<int:operation_pk>/cancel/",
        instances.instance_migration_cancel,
        name="instance_migration_cancel",
    ),
    path("instances/<int:pk>/console/", consoles.instance_console, name="instance_console"),
    path("instances/<int:pk>/console/ticket/", consoles.instance_console_ticket, name="instance_console_ticket"),
    path("hosts/", hosts.host_list, name="hosts"),
    path("hosts/<int:pk>/refresh/", hosts.host_refresh, name="host_refresh"),
    path("hosts/<int:pk>/drain/", hosts.host_drain, name="host_drain"),
    path("hosts/<int:pk>/evacuate/", hosts.host_evacuate, name="host_evacuate"),
    path("keypairs/", keypairs.keypair_list, name="keypairs"),
    path("keypairs/import/", keypairs.keypair_import, name="keypair_import"),
    path("keypairs/generate/", keypairs.keypair_generate, name="keypair_generate"),
    path("keypairs/<int:pk>/delete/", keypairs.keypair_delete, name="keypair_delete"),
    path("networks/", networks.network_list, name="networks"),
]
