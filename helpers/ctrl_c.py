"""Ctrl-C while a run writes its files, and a Ctrl-C that Python drops.

ctrl_c_held() holds SIGINT off during a write, so a file is never left half written; with
ctrl_c_remembered() on, raise_if_ctrl_c() raises one that Python dropped (in a finalizer) again.
"""

import contextlib
import signal
import sys
import threading

_caught: list[int] | None = None  # the Ctrl-Cs held off so far, while a block holds them


@contextlib.contextmanager
def ctrl_c_held():
    """Hold off Ctrl-C (SIGINT) inside the block; one that came raises KeyboardInterrupt after it.

    Blocks nest: the outermost one holds, so files written together are all written."""
    global _caught
    if _caught is not None or threading.current_thread() is not threading.main_thread():
        yield
        return
    _caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: _caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        caught, _caught = _caught, None
    if caught:
        raise KeyboardInterrupt


_pressed = False  # a Ctrl-C came while ctrl_c_remembered() was on


@contextlib.contextmanager
def ctrl_c_remembered():
    """Inside the block Ctrl-C raises KeyboardInterrupt as usual, and is remembered so that
    raise_if_ctrl_c() raises it again: Python drops an exception raised inside a finalizer or a
    weakref callback (printing "Exception ignored in ...", which is silenced here for Ctrl-C),
    and a loop would go on as if never stopped."""
    global _pressed
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def remember(signum, frame):
        global _pressed
        _pressed = True
        raise KeyboardInterrupt

    def report(unraisable) -> None:
        if not isinstance(
            unraisable.exc_value, KeyboardInterrupt
        ):  # a dropped Ctrl-C: raised again
            previous_hook(unraisable)

    _pressed = False
    previous, previous_hook = signal.signal(signal.SIGINT, remember), sys.unraisablehook
    sys.unraisablehook = report
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook
        _pressed = False


def raise_if_ctrl_c() -> None:
    """Raise KeyboardInterrupt for a Ctrl-C that came and was lost (see ctrl_c_remembered)."""
    if _pressed:
        raise KeyboardInterrupt
