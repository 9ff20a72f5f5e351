"""English and Simplified Chinese: the catalogue is complete and the pages use it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import translation

LOCALE_DIR = Path(settings.BASE_DIR) / "locale" / "zh_Hans" / "LC_MESSAGES"
PO = LOCALE_DIR / "django.po"
MO = LOCALE_DIR / "django.mo"


def ensure_compiled_messages() -> None:
    """Compile the .po when its .mo is missing or older (scripts/bootstrap.sh normally did it already)."""
    if MO.exists() and MO.stat().st_mtime >= PO.stat().st_mtime:
        return
    msgfmt = shutil.which("msgfmt")
    if msgfmt is None:
        pytest.fail("msgfmt missing: `make test` installs gettext (scripts/bootstrap.sh)")
    subprocess.run([msgfmt, "--check-format", "-o", str(MO), str(PO)], check=True)
    # Forget catalogues loaded before the compilation.
    from django.utils.translation import trans_real

    trans_real._translations = {}
    trans_real._default = None


def parse_po(path: Path) -> list[dict]:
    """Entries of a .po file: msgid, msgid_plural, msgstr (list of the forms) and flags. Just enough for the checks."""
    entries: list[dict] = []
    entry: dict = {}
    key = None

    def finish():
        if "msgid" in entry:
            entries.append(entry.copy())
        entry.clear()

    for raw in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        line = raw.strip()
        if not line:
            finish()
            key = None
        elif line.startswith("#~"):
            continue  # obsolete entry
        elif line.startswith("#,"):
            entry.setdefault("flags", set()).update(flag.strip() for flag in line[2:].split(","))
        elif line.startswith("#"):
            continue
        elif line.startswith('"'):
            value = _unquote(line)
            if key == "msgstr":
                entry["msgstr"][-1] += value
            else:
                entry[key] += value
        else:
            match = re.match(r"(msgctxt|msgid_plural|msgid|msgstr)(?:\[(\d+)\])? (\".*\")$", line)
            assert match, f"unexpected line in {path.name}: {raw!r}"
            key, _index, value = match.groups()
            if key == "msgstr":
                entry.setdefault("msgstr", []).append(_unquote(value))
            else:
                entry[key] = _unquote(value)
    return entries


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), quoted[1:-1])


@pytest.fixture(autouse=True)
def compiled():
    ensure_compiled_messages()


@pytest.fixture(autouse=True)
def keep_language():
    """LocaleMiddleware leaves the last request's language active in this thread: restore it for later tests."""
    previous = translation.get_language()
    yield
    if previous:
        translation.activate(previous)
    else:
        translation.deactivate()


def test_every_message_is_translated_and_none_is_fuzzy():
    entries = parse_po(PO)
    header, messages = entries[0], entries[1:]
    assert header["msgid"] == ""
    assert "Plural-Forms: nplurals=1; plural=0;" in header["msgstr"][0]
    assert len(messages) > 300
    untranslated = [e["msgid"] for e in messages if not all(form.strip() for form in e["msgstr"])]
    fuzzy = [e["msgid"] for e in messages if "fuzzy" in e.get("flags", ())]
    assert not untranslated, f"untranslated: {untranslated}"
    assert not fuzzy, f"fuzzy: {fuzzy}"


def test_placeholders_survive_translation():
    for entry in parse_po(PO)[1:]:
        source = entry["msgid"] + entry.get("msgid_plural", "")
        wanted = sorted(set(re.findall(r"%\(\w+\)[sd]", source)))
        for form in entry["msgstr"]:
            assert sorted(set(re.findall(r"%\(\w+\)[sd]", form))) == wanted, entry["msgid"]


def test_msgfmt_accepts_the_catalogue():
    msgfmt = shutil.which("msgfmt")
    if msgfmt is None:
        pytest.fail("msgfmt missing: `make test` installs gettext (scripts/bootstrap.sh)")
    result = subprocess.run(
        [msgfmt, "--check", "--statistics", "-o", "/dev/null", str(PO)], capture_output=True, text=True, check=True
    )
    assert re.fullmatch(r"\d+ translated messages\.", result.stderr.strip()), result.stderr


def test_login_page_in_chinese_by_accept_language(db):
    response = Client(headers={"accept-language": "zh-Hans,zh;q=0.9"}).get(reverse("login"))
    html = response.content.decode()
    assert '<html lang="zh-hans">' in html
    assert "登录" in html and "用户名" in html and "密码" in html
    assert "Sign in to your account" not in html


def test_login_page_in_english_by_default(db):
    html = Client().get(reverse("login")).content.decode()
    assert '<html lang="en">' in html and "Sign in to your account" in html
    # The language menu offers both languages in their own names.
    assert 'value="zh-hans"' in html and "简体中文" in html and 'value="en"' in html


def test_overview_in_chinese_by_cookie(actors):
    client = Client()
    client.force_login(actors.tenant_admin)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    html = client.get(reverse("overview")).content.decode()
    assert "概览" in html and "配额使用情况" in html and "租户管理员" in html
    assert "Tenant A" in html  # data stays as it is
    assert "Overview" not in html


def test_set_language_switches_to_chinese_and_back(actors):
    client = Client()
    client.force_login(actors.member)
    response = client.post(reverse("set_language"), {"language": "zh-hans", "next": reverse("tokens")})
    assert response.status_code == 302 and response["Location"] == reverse("tokens")
    html = client.get(reverse("tokens")).content.decode()
    assert "API 令牌" in html and "创建令牌" in html
    client.post(reverse("set_language"), {"language": "en", "next": reverse("tokens")})
    assert "Create token" in client.get(reverse("tokens")).content.decode()


def test_service_errors_are_translated(actors):
    client = Client()
    client.force_login(actors.tenant_admin)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    html = client.post(reverse("members"), {"username": "ghost", "role": "member"}).content.decode()
    assert "没有名为“ghost”的用户。" in html
