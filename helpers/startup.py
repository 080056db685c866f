"""Two start-up settings for speed, out of main.py's story: the garbage collector off while torch
loads, and denormal floats flushed on the CPU. Nothing here imports torch before it is loaded.
"""

import gc


def collector_off() -> None:
    """Pause garbage collection while torch and torchvision load: their imports make a million
    objects and no garbage, and the collector would walk them again and again."""
    gc.disable()


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
