"""Celery tasks of the image catalogue: thin wrappers around images.services, idempotent by operation."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from images import services


@shared_task(acks_late=True)
def process_image_task(operation_id: int) -> None:
    services.process_image(operation_id=operation_id)


@shared_task(acks_late=True)
def import_image_task(operation_id: int) -> None:
    services.download_image(operation_id=operation_id)


@shared_task(acks_late=True)
def capture_image_task(operation_id: int) -> None:
    services.flatten_capture(operation_id=operation_id)


@shared_task(acks_late=True)
def distribute_image_task(operation_id: int) -> None:
    services.distribute_image(operation_id=operation_id)


@shared_task
def purge_stale_uploads_task() -> int:
    return services.purge_stale_uploads(older_than=timedelta(hours=settings.LABCLOUD_IMAGE_UPLOAD_STALE_HOURS))
