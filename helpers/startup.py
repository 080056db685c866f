"""What a run sets before and after torch loads, out of main.py's story: the garbage collector
off while torch loads, a stop meanwhile in one line, and denormal floats flushed on the CPU.
Nothing here imports torch before it is loaded.
"""

import gc

from helpers.ctrl_c import quiet_start_up


def before_imports() -> None:
    """Pause garbage collection while torch and torchvision load (their imports make a million
    objects and no garbage, which the collector would walk again and again), and make a Ctrl-C,
    SIGTERM or SIGHUP meanwhile end the process in one line, without a traceback."""
    gc.disable()
    quiet_start_up()


def after_imports() -> None:
    """Freeze the objects loaded so far (the collector skips them, now and at exit), collect the
    run's own again, and flush denormal floats.

    Floats below 1.2e-38 are computed on slowly by the CPU, and Adam's second moments for the
    pixels the decoder switches off sink into that range. Call this before torch's first parallel
    work: its worker threads copy the setting when they start.
    """
    import torch

    gc.freeze()
    gc.enable()
    torch.set_flush_denormal(True)
