from django.urls import path

from images import views

urlpatterns = [
    path("images/", views.image_list, name="images"),
    path("images/upload/", views.image_upload, name="image_upload"),
    path("images/import/", views.image_import, name="image_import"),
    path("images/delete-failed/", views.image_delete_failed, name="image_delete_failed"),
    path("images/<int:pk>/", views.image_detail, name="image_detail"),
    path("images/<int:pk>/live/", views.image_live, name="image_live"),
    path("images/<int:pk>/edit/", views.image_edit, name="image_edit"),
    path("images/<int:pk>/share/", views.image_share, name="image_share"),
    path("images/<int:pk>/shares/<int:share_pk>/withdraw/", views.image_share_withdraw, name="image_share_withdraw"),
    path("images/shares/<int:share_pk>/accept/", views.image_share_accept, name="image_share_accept"),
    path("images/shares/<int:share_pk>/reject/", views.image_share_reject, name="image_share_reject"),
    path("images/<int:pk>/delete/", views.image_delete, name="image_delete"),
    path("images/<int:pk>/distribute/", views.image_distribute, name="image_distribute"),
]
