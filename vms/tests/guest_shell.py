"""The tiny test guest's root shell on its serial console, driven through the portal's ``SerialConsole``.

The tiny guest (tests_media/init) runs ``/bin/sh`` on ttyS0 once it printed LABCLOUD-TINY-BOOTED.
``GuestShell.run`` types a command followed by ``echo <tag>=$?`` and waits for that line: the
exit status is the event, no sleeps. The shell echoes what is typed (and wraps it at 80 columns),
so the typed ``<tag>=$?`` never matches the ``<tag>=<digits>`` it waits for; match the output you
need with a pattern the typed command cannot contain.
"""

from __future__ import annotations

import re
import threading
import time

from portal.backends.libvirt.serial import SerialConsole


class GuestShell:
    def __init__(self, uri: str, uuid: str) -> None:
        self._output = bytearray()
        self._changed = threading.Condition()
        self._ended: str | None = None
        self._count = 0
        self.console = SerialConsole(uri, uuid, on_data=self._on_data, on_end=self._on_end)

    def _on_data(self, data: bytes) -> None:
        with self._changed:
            self._output.extend(data)
            self._changed.notify_all()

    def _on_end(self, reason: str) -> None:
        with self._changed:
            self._ended = reason
            self._changed.notify_all()

    def __enter__(self) -> GuestShell:
        self.console.open()
        return self

    def __exit__(self, *exc) -> None:
        self.console.close()

    def _wait(self, pattern: re.Pattern[bytes], start: int, timeout: float) -> re.Match[bytes] | None:
        with self._changed:
            self._changed.wait_for(lambda: pattern.search(self._output, start) or self._ended, timeout)
            return pattern.search(self._output, start)

    def ready(self, timeout: float = 60) -> None:
        """Wait until the shell answers (getty starts it just after the boot marker; input before is lost)."""
        deadline = time.monotonic() + timeout
        while True:
            self._count += 1
            tag = f"LCREADY{self._count}"
            start = len(self._output)
            self.console.write(f"echo {tag}=$((6*7))\r".encode())
            if self._wait(re.compile(rf"{tag}=42".encode()), start, min(5.0, timeout)):
                return
            if self._ended or time.monotonic() > deadline:
                raise AssertionError(f"the guest's shell did not answer; the console ends:\n{self.tail()}")

    def run(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """Run ``command`` in the guest; its exit status and everything the console printed meanwhile."""
        self._count += 1
        tag = f"LCDONE{self._count}"
        start = len(self._output)
        self.console.write(f"{command}; echo {tag}=$?\r".encode())
        found = self._wait(re.compile(rf"{tag}=(\d+)".encode()), start, timeout)
        if found is None:
            raise AssertionError(f"{command!r} did not finish within {timeout} s; the console ends:\n{self.tail()}")
        return int(found.group(1)), bytes(self._output[start : found.start()]).decode(errors="replace")

    def wait_for_number(self, pattern: bytes, above: int, timeout: float = 60) -> list[int]:
        """Every number ``pattern`` (one group) matched on this console so far, once one of them is above ``above``."""
        regex = re.compile(pattern)

        def numbers() -> list[int]:
            return [int(n) for n in regex.findall(self._output)]

        with self._changed:
            self._changed.wait_for(lambda: any(n > above for n in numbers()) or self._ended, timeout)
            found = numbers()
        if not any(n > above for n in found):
            raise AssertionError(f"no {pattern!r} above {above} within {timeout} s; the console ends:\n{self.tail()}")
        return found

    def tail(self, size: int = 2000) -> str:
        return bytes(self._output[-size:]).decode(errors="replace")
