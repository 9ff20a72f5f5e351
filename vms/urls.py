from django.urls import path

from vms import views

urlpatterns = [
    path("flavors/", views.flavor_list, name="flavors"),
]
