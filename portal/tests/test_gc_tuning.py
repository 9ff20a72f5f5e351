"""The web process's collector (``portal.gc_tuning``): portal.asgi freezes what start-up made and raises the
young generation's threshold, unless WEB_GC_THRESHOLD=0. Checked in a fresh interpreter that loads the ASGI
application as daphne does; the effect on big pages is measured by ``bench/api_lists.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

PROBE = (
    "import gc, json, portal.asgi; "
    "from django.urls import get_resolver; "
    "print(json.dumps([gc.get_freeze_count(), gc.get_threshold()[0], len(get_resolver().url_patterns) > 0]))"
)


def _probe(**env: str) -> list:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("setting", "threshold"), [("50000", 50000), ("20000", 20000)])
def test_the_web_process_freezes_start_up_and_collects_less_often(setting, threshold):
    frozen, young, urls = _probe(WEB_GC_THRESHOLD=setting)
    assert frozen > 100_000  # Django, DRF, channels and the portal's modules, views and URL patterns
    assert young == threshold and urls


def test_zero_leaves_the_collector_alone():
    frozen, young, _urls = _probe(WEB_GC_THRESHOLD="0")
    assert (frozen, young) == (0, 700)
