"""A forked child that runs one function, reports its JSON result and exits when told.

The child stays alive after reporting, so the parent can count server-side
sessions while both pools exist; :meth:`ForkedChild.finish` lets it exit
(``os._exit``: no pytest teardown in the child) and waits for it with a bound.
"""

from __future__ import annotations

import json
import os
import select
import time
import traceback
from collections.abc import Callable
from typing import Any


class ForkedChild:
    """``fn`` run in a child process; every wait on it is bounded."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        report_r, report_w = os.pipe()
        exit_r, exit_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                os.close(report_r)
                os.close(exit_w)
                try:
                    payload = {"ok": True, "value": fn()}
                except BaseException:
                    payload = {"ok": False, "error": traceback.format_exc()}
                data = json.dumps(payload).encode()
                while data:
                    data = data[os.write(report_w, data) :]
                os.close(report_w)
                os.read(exit_r, 1)  # EOF once the parent says so (or dies)
                code = 0
            finally:
                os._exit(code)
        os.close(report_w)
        os.close(exit_r)
        self.pid = pid
        self._report = report_r
        self._exit = exit_w
        self._status: int | None = None

    def result(self, timeout: float = 60.0) -> Any:
        """The child's return value; its traceback as the failure if it raised."""
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError(f"the child did not report within {timeout:g}s")
            ready, _, _ = select.select([self._report], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._report, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self._report)
        if not chunks:
            self.finish()
            raise AssertionError(f"the child died without reporting (status {self._status})")
        payload = json.loads(b"".join(chunks))
        if not payload["ok"]:
            self.finish()
            raise AssertionError(f"the child failed:\n{payload['error']}")
        return payload["value"]

    def finish(self, timeout: float = 30.0) -> int:
        """Let the child exit and reap it; returns its exit code (killed after ``timeout``)."""
        if self._status is None:
            os.close(self._exit)
            deadline = time.monotonic() + timeout
            while True:
                done, status = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    self._status = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() >= deadline:
                    self.kill()
                    raise AssertionError(f"the child did not exit within {timeout:g}s")
                time.sleep(0.01)
        return self._status

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
            _, status = os.waitpid(self.pid, 0)
            self._status = os.waitstatus_to_exitcode(status)
        except (ProcessLookupError, ChildProcessError):
            pass
