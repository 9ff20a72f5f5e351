"""Messages stored untranslated with their parameters, translated by each reader.

The worker writes in no one's language: what it stores (an operation's progress, success or error, an
instance's state reason) is a msgid and its parameters (``said``), and every page, socket and API answer
translates it in its reader's language (``translated``). A service refusal (``portal.services.ServiceError``)
made from a ``Said`` keeps it, so a worker that stores the refusal stores the msgid too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.utils.functional import Promise
from django.utils.translation import gettext, override


@dataclass(frozen=True)
class Said:
    """A message the worker stores untranslated with its parameters: ``said(gettext_noop("… %(name)s …"),
    name=…)``. Every reader translates it in its own language (``translated``)."""

    text: str
    args: dict[str, Any]

    def __str__(self) -> str:  # in English, where one language is all a field keeps (an instance's state reason)
        return self.text % self.args


# The parameters that are msgids themselves (a lazily translated verb): translated with the text.
TRANSLATED_ARGS = "_translated"


def said(text: str, **args: Any) -> Said:
    """``text`` (a msgid) with its parameters; a call whose parameters do not fit the text fails here, in the
    worker, not on a reader's page. A lazily translated parameter (``gettext_lazy``) is kept as its msgid and
    translated with the text by each reader."""
    lazy = sorted(name for name, value in args.items() if isinstance(value, Promise))
    if lazy:
        with override(None):  # no language: a lazy string gives its msgid
            args = {name: str(value) if name in lazy else value for name, value in args.items()}
        args[TRANSLATED_ARGS] = lazy
    text % args  # raises KeyError/TypeError/ValueError now
    return Said(text=text, args=args)


def translated(text: str, args: dict[str, Any] | None = None) -> str:
    """A stored message in the active language: the portal's own are msgids (translated here, then their
    parameters put in); anything else (a backend's words) comes back as it is."""
    if not text:
        return ""
    if not args:
        return gettext(text)
    if args.get(TRANSLATED_ARGS):
        args = {**args, **{name: gettext(args[name]) for name in args[TRANSLATED_ARGS] if name in args}}
    try:
        return gettext(text) % args
    except (KeyError, TypeError, ValueError):  # a translation that lost a parameter: the English one
        try:
            return text % args
        except (KeyError, TypeError, ValueError):  # cut at the field's length, say: the text as it is
            return text
