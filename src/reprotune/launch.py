"""Run a training command so that a time limit or a preemption ends in a checkpoint.

    python -m reprotune.launch -- accelerate launch ... -m reprotune.train ...

SLURM (and most schedulers) send SIGTERM -- or, with ``--signal=USR1@<seconds>``, SIGUSR1 --
before they kill a job.  This launcher runs the command in its own process group with SIGTERM
and SIGUSR1 ignored (set to ``SIG_IGN`` in the child before exec), so ``accelerate launch`` and
torchrun, which inherit the ignore, survive them; the training processes install their own
handlers (``reprotune.train``: checkpoint at the next optimizer-step end, exit 75).  Every
SIGTERM / SIGUSR1 the launcher receives is forwarded to the whole group, and to every process
below the command that left the group: torchrun starts each worker in a session of its own, so
a signal to the group alone would never reach the training processes of a multi-process run.
torchrun would also catch SIGTERM itself and terminate its workers (SIGKILL after 30 s): its
``--signals-to-handle`` (``PET_SIGNALS_TO_HANDLE``, which becomes
``TORCHELASTIC_SIGNALS_TO_HANDLE``) is set to leave SIGTERM alone unless the environment sets
them already, so torchrun keeps the inherited ignore.

Exit status: the command's (128 + N when signal N killed it); after a forwarded signal never 0
(75, EX_TEMPFAIL, when the command reports 0), so a job that was told to stop never counts as
finished.  The rule ``exec``s the launcher so that it is the process the scheduler signals.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

FORWARDED = (signal.SIGTERM, signal.SIGUSR1)
EX_TEMPFAIL = 75
EX_USAGE = 2
TORCHELASTIC_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"  # torchrun's default minus SIGTERM


def _ignore_forwarded() -> None:
    """In the child, before exec: ignore what the launcher forwards (inherited across exec)."""
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_IGN)


class Forwarder:
    """Signal handler: sends each signal on to the child's process group (held until it exists)."""

    def __init__(self) -> None:
        self.pgid: int | None = None
        self.received: list[int] = []

    def __call__(self, signum: int, frame) -> None:
        self.received.append(signum)
        if self.pgid is not None:
            self._send(signum)

    def attach(self, pgid: int) -> None:
        self.pgid = pgid
        for signum in self.received:
            self._send(signum)

    def _send(self, signum: int) -> None:
        outside = _outside_group(self.pgid)
        print(f"[reprotune.launch] forwarding {signal.Signals(signum).name} to process group {self.pgid}"
              f" and {len(outside)} process(es) below it in other groups", file=sys.stderr, flush=True)
        for pid in outside:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        with contextlib.suppress(ProcessLookupError):  # the group has exited already
            os.killpg(self.pgid, signum)


def _outside_group(pid: int) -> list[int]:
    """Processes below ``pid`` (its process group leader) that are not in its group."""
    import psutil

    try:
        below = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for proc in below:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(proc.pid) != pid:
                out.append(proc.pid)
    return out


def exit_status(returncode: int, forwarded: bool) -> int:
    """The launcher's status for the child's ``returncode`` (negative: killed by that signal)."""
    status = 128 - returncode if returncode < 0 else returncode
    if forwarded and status == 0:
        return EX_TEMPFAIL
    return status


def launch(cmd: list[str]) -> int:
    """Run ``cmd`` (own process group, forwarded signals ignored in it); return the exit status."""
    forwarder = Forwarder()
    previous = {sig: signal.signal(sig, forwarder) for sig in FORWARDED}
    env = dict(os.environ)
    for name in ("PET_SIGNALS_TO_HANDLE", "TORCHELASTIC_SIGNALS_TO_HANDLE"):
        env.setdefault(name, TORCHELASTIC_SIGNALS)
    try:
        child = subprocess.Popen(cmd, env=env, process_group=0, preexec_fn=_ignore_forwarded)
        forwarder.attach(child.pid)
        returncode = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_status(returncode, bool(forwarder.received))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m reprotune.launch -- COMMAND [ARGS...]", file=sys.stderr)
        return EX_USAGE
    try:
        return launch(args)
    except OSError as e:  # the command could not be started
        print(f"reprotune.launch: error: cannot run {args[0]!r}: {e.strerror or e}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
