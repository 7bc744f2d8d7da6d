"""One call run in a thread while the command goes on: `Background(fn, *args)` starts it, `result()` joins
it and returns its value or raises its exception in the caller, `wait()` joins it and returns its exception.

For work that spends its time outside the interpreter with the GIL released (`easc transform`: the
output's fsync, beside onnxruntime's session on that output). Measured before use: work that competes for
the cores with numpy's BLAS threads gains nothing (the user's file's reference session beside the passes'
local checks: 0.99-1.12x the wall, and a higher peak RSS), so it stays in order. Every path of a caller must
join (`result` or `wait`): a thread left running would outlive the command's error handling (the
hostile-input tests run many commands in one process). The thread is not a daemon, so even a missed join
cannot let the interpreter exit in the middle of a write. If no thread can be started (a memory limit leaves
no room for its stack), the call runs right away in the caller.
"""

from __future__ import annotations

import threading


class Background:
    def __init__(self, fn, *args):
        self._value = None
        self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name=f"easc-{fn.__name__}")
        try:
            self._thread.start()
        except RuntimeError:  # "can't start new thread": run it here, same result, no overlap
            self._thread = None
            self._run(fn, args)

    def _run(self, fn, args) -> None:
        try:
            self._value = fn(*args)
        except BaseException as e:  # handed to the caller's thread, which decides what it means
            self._error = e

    def wait(self) -> BaseException | None:
        """Join; the call's exception (None if it returned)."""
        if self._thread is not None:
            self._thread.join()
        return self._error

    def result(self):
        """Join; the call's value, or its exception raised here."""
        error = self.wait()
        if error is not None:
            raise error
        return self._value
