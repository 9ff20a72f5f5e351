"""Celery tasks of the image catalogue: thin wrappers around images.services, idempotent by operation."""

from celery import shared_task

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
