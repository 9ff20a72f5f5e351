"""Celery tasks of the image catalogue: thin wrappers around its services, idempotent by operation."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings


@shared_task(acks_late=True)
def process_image_task(operation_id: int) -> None:
    from images.services import process_image

    process_image(operation_id=operation_id)


@shared_task(acks_late=True)
def import_image_task(operation_id: int) -> None:
    from images.imports import download_image

    download_image(operation_id=operation_id)


@shared_task(acks_late=True)
def capture_image_task(operation_id: int) -> None:
    from images.capture import flatten_capture

    flatten_capture(operation_id=operation_id)


@shared_task(acks_late=True)
def distribute_image_task(operation_id: int) -> None:
    from images.services import distribute_image

    distribute_image(operation_id=operation_id)


@shared_task
def purge_stale_uploads_task() -> int:
    from images.services import purge_stale_uploads

    return purge_stale_uploads(older_than=timedelta(hours=settings.LABCLOUD_IMAGE_UPLOAD_STALE_HOURS))
