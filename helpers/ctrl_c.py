"""Ctrl-C, SIGTERM and SIGHUP: a run stops on each the same way, never inside a write.

ctrl_c_held() holds the three signals off during a write, so a file is never left half written;
with ctrl_c_remembered() on, each raises Interrupted (a KeyboardInterrupt that knows its signal),
and raise_if_ctrl_c() raises one that Python dropped (in a finalizer) again. SIGTERM (docker
stop, SLURM, systemd) and SIGHUP (a closed terminal) get a handler of their own, so that they stop
a run as PID 1 of a container too, where their default action is to be ignored.
quiet_start_up() makes the first seconds, while torch loads, end in one line too.
"""

import contextlib
import os
import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP: the run stops; exit status 128 + the signal's number."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum


def exit_status(stop: KeyboardInterrupt) -> int:
    """128 + the signal that stopped the run (130 for Ctrl-C), as a shell reports it."""
    return 128 + getattr(stop, "signum", signal.SIGINT)


def signal_name(stop: KeyboardInterrupt) -> str:
    """ "Ctrl-C", "SIGTERM", "SIGHUP": what stopped the run, for its last line."""
    signum = getattr(stop, "signum", signal.SIGINT)
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def _set_handlers(handler) -> dict:
    """Give every stop signal `handler`, but one that is ignored (nohup, a background job): it
    stays ignored. Return the handlers they had."""
    return {
        signum: signal.signal(signum, handler)
        for signum in STOP_SIGNALS
        if signal.getsignal(signum) is not signal.SIG_IGN
    }


def _restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


_caught: list[int] | None = None  # the stop signals held off so far, while a block holds them


@contextlib.contextmanager
def ctrl_c_held():
    """Hold off Ctrl-C, SIGTERM and SIGHUP inside the block; the first that came is delivered
    after it, to the handler it had before (inside a run: Interrupted; else as it would have been).

    Blocks nest: the outermost one holds, so files written together are all written."""
    global _caught
    if _caught is not None or threading.current_thread() is not threading.main_thread():
        yield
        return
    _caught = []
    previous = _set_handlers(lambda signum, frame: _caught.append(signum))
    try:
        yield
    finally:
        _restore(previous)
        caught, _caught = _caught, None
    if caught:
        signal.raise_signal(caught[0])


_pressed: int | None = None  # the stop signal that came while ctrl_c_remembered() was on


@contextlib.contextmanager
def ctrl_c_remembered():
    """Inside the block Ctrl-C, SIGTERM and SIGHUP raise Interrupted, and are remembered so that
    raise_if_ctrl_c() raises it again: Python drops an exception raised inside a finalizer or a
    weakref callback (printing "Exception ignored in ...", which is silenced here for them),
    and a loop would go on as if never stopped."""
    global _pressed
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def remember(signum, frame):
        global _pressed
        _pressed = signum
        raise Interrupted(signum)

    def report(unraisable) -> None:
        if not isinstance(
            unraisable.exc_value, KeyboardInterrupt
        ):  # a dropped Ctrl-C: raised again
            previous_hook(unraisable)

    _pressed = None
    previous, previous_hook = _set_handlers(remember), sys.unraisablehook
    sys.unraisablehook = report
    try:
        yield
    finally:
        _restore(previous)
        sys.unraisablehook = previous_hook
        _pressed = None


def raise_if_ctrl_c() -> None:
    """Raise Interrupted for a stop signal that came and was lost (see ctrl_c_remembered)."""
    if _pressed is not None:
        raise Interrupted(_pressed)


def quiet_start_up() -> None:
    """Until ctrl_c_remembered() takes over: a stop signal ends the process with one line and
    its exit status, not a traceback from inside torch's imports. Nothing is written by then that
    a stop could leave half done (the run folder is locked and empty, or its files untouched)."""

    def stop(signum, frame) -> None:
        by = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
        with contextlib.suppress(Exception):
            print(f"\ninterrupted{by} while starting: nothing was written", flush=True)
        os._exit(128 + signum)

    _set_handlers(stop)
