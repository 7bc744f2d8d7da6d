"""Deterministic crash points for testing resume: the driver SIGKILLs itself at a named moment.

`EASC_KILL_AT=NAME@STEP` (e.g. `child_done@2`) makes the search process kill itself with SIGKILL the first
time it reaches point NAME in step STEP. A kill at a random time tests one moment by chance; these name the
moments that matter for exact resume:

    stage_start      a stage's start net is recorded (pending) but not trained        (at the stage's first step)
    stage_started    a stage's start net is trained and stored, no child sampled yet  (at the stage's first step)
    sampling         half of the step's children are sampled and submitted
    child_done       the first child of the step has finished and is stored
    controller_update the policy has been updated in memory, the step is not recorded yet
    between_steps    the step and the controller state are committed, the next step has not begun

Unset (always, outside tests), `kill_point` costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "EASC_KILL_AT"
POINTS = ("stage_start", "stage_started", "sampling", "child_done", "controller_update", "between_steps")


def kill_point(name: str, step: int) -> None:
    if os.environ.get(ENV) == f"{name}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
