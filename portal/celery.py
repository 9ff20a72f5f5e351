"""Celery application: the worker runs long operations (see docs/architecture.md).

Two queues: instance operations and housekeeping on ``CELERY_QUEUE``, image work (every task of
``images.tasks``) on ``<CELERY_QUEUE>.images``, each read by a worker of its own, so a launch or a
power action never waits behind an import, a conversion or a copy.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

IMAGE_TASKS = "images.tasks."


def image_queue() -> str:
    """The queue of image work: named after the default queue, so whatever sets that (CELERY_QUEUE, a test's
    private queue) sets both."""
    return f"{app.conf.task_default_queue}.images"


def route_task(name, args, kwargs, options, task=None, **kw):
    """Celery router (CELERY_TASK_ROUTES): image tasks to the image queue, the rest to the default queue."""
    if name.startswith(IMAGE_TASKS):
        return {"queue": image_queue()}
    return None
