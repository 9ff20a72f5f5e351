"""The web process's garbage collector, tuned for big pages.

A 500-row API page allocates a few hundred thousand objects, many of which live until the response is
sent. With CPython's default thresholds (700, 10, 10) that triggers about ten young collections per
request and, every few requests, a full collection that walks every object of the process — Django,
DRF, channels and the portal's own modules, some hundred milliseconds on these machines, paid by
whichever request happened to trigger it (the list's p95). ``bench/api_lists.py`` measures it.

At start-up the web process imports everything its URLs reach, collects once, and freezes what is
left (``gc.freeze``: moved to a permanent generation that collections no longer walk), then raises
the young generation's threshold so that a big page is collected once or twice rather than ten
times. Cyclic garbage is still collected; only its timing changes.
"""

from __future__ import annotations

import gc

from django.conf import settings


def tune_for_serving() -> None:
    """Freeze what start-up made and raise the first threshold (``LABCLOUD_GC_THRESHOLD``; 0 leaves the
    collector as CPython sets it)."""
    threshold = settings.LABCLOUD_GC_THRESHOLD
    if threshold <= 0:
        return
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - imports every view, serializer and model now, to be frozen
    gc.collect()
    gc.freeze()
    _young, *older = gc.get_threshold()
    gc.set_threshold(threshold, *older)
