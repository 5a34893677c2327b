"""Test-only entry for ``reprotune.train`` (not a test module): the same command line, plus
callbacks that stop a run at a chosen point, passed to ``train.main(..., extra_callbacks=...)``.

    accelerate launch ... tests/_train_hooks.py --hang-before-mark 4 --spec ... --data ...
    python tests/_train_hooks.py --crash-after-checkpoint 1 --spec ... --data ...
    ... tests/_train_hooks.py --wait-for-stop-at 3 ...   (holds step 3's end until SIGTERM/SIGUSR1)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from transformers import TrainerCallback

log = logging.getLogger("reprotune.train")
CRASH_STATUS = 75


class HangBeforeMark(TrainerCallback):
    """Hang after checkpoint-``step``'s files are written, before it is marked complete."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            log.error("test hook: hanging before marking checkpoint-%d complete", self.step)
            while True:
                time.sleep(60)


class CrashAfterCheckpoint(TrainerCallback):
    """Exit at once (no cleanup) when the step after complete checkpoint-``step`` begins."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            log.error("test hook: crashing after checkpoint-%d", self.step)
            os._exit(CRASH_STATUS)


class WaitForStop(TrainerCallback):
    """Hold the end of step ``step`` until the training process has received a stop signal, so that
    the stop happens exactly there (it runs before train's own step-end callback)."""

    def __init__(self, step: int, request):
        self.step = step
        self.request = request

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != self.step:
            return
        log.info("test hook: waiting for a stop signal at the end of step %d", self.step)
        while not self.request.signum:
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    from reprotune import train

    parser = argparse.ArgumentParser(prog="_train_hooks")
    parser.add_argument("--hang-before-mark", type=int, default=0)
    parser.add_argument("--crash-after-checkpoint", type=int, default=0)
    parser.add_argument("--wait-for-stop-at", type=int, default=0)
    hooks, rest = parser.parse_known_args(argv)
    stop = train.StopRequest()
    callbacks = [cls(step) for cls, step in ((HangBeforeMark, hooks.hang_before_mark),
                                              (CrashAfterCheckpoint, hooks.crash_after_checkpoint)) if step > 0]
    if hooks.wait_for_stop_at > 0:
        callbacks.append(WaitForStop(hooks.wait_for_stop_at, stop))
    return train.main(rest, extra_callbacks=callbacks, stop=stop)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
