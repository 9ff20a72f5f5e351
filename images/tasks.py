"""Celery tasks of the image catalogue: thin wrappers around its services, idempotent by operation.

They run on the image queue (``portal.celery.route_task``), with time limits that fit their work: at
the soft limit the service fails the operation cleanly (``SoftTimeLimitExceeded``), the hard limit
follows ``LABCLOUD_TASK_TIME_LIMIT_GRACE`` seconds later.
"""

from datetime import timedelta

from celery import shared_task
from django.conf import settings


def _limits(seconds: int) -> dict[str, int]:
    return {"soft_time_limit": seconds, "time_limit": seconds + settings.LABCLOUD_TASK_TIME_LIMIT_GRACE}


@shared_task(acks_late=True, **_limits(settings.LABCLOUD_IMAGE_TASK_TIME_LIMIT))
def process_image_task(operation_id: int) -> None:
    from images.services import process_image

    process_image(operation_id=operation_id)


@shared_task(acks_late=True, **_limits(settings.LABCLOUD_IMAGE_IMPORT_TASK_TIME_LIMIT))
def import_image_task(operation_id: int) -> None:
    from images.imports import download_image

    download_image(operation_id=operation_id)


@shared_task(acks_late=True, **_limits(settings.LABCLOUD_IMAGE_TASK_TIME_LIMIT))
def capture_image_task(operation_id: int) -> None:
    from images.capture import flatten_capture

    flatten_capture(operation_id=operation_id)


@shared_task(acks_late=True, **_limits(settings.LABCLOUD_IMAGE_TASK_TIME_LIMIT))
def distribute_image_task(operation_id: int) -> None:
    from images.services import distribute_image

    distribute_image(operation_id=operation_id)


@shared_task  # the default limits (CELERY_TASK_SOFT_TIME_LIMIT)
def purge_stale_uploads_task() -> int:
    from images.services import purge_stale_uploads

    return purge_stale_uploads(older_than=timedelta(hours=settings.LABCLOUD_IMAGE_UPLOAD_STALE_HOURS))
