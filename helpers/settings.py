"""A run's settings: the flags, merged with the checkpoint's they name, checked before any work;
and the device.

A checkpoint keeps the flags a run was made with (its --data-dir as an absolute path). Given it
again (--resume, --evaluate, --generate), every flag not on the command line comes from it,
except the ones of one invocation: the mode's (flags.MODE_FLAGS) and where the run computes
(flags.INVOCATION_FLAGS: device, threads, compile, amp). The model-and-data flags given must
agree with it. Its data folder is used where this machine has the dataset there, else the
default (data_folder_here).
"""

import os
from argparse import Namespace

import torch

from helpers import flags
from helpers.checkpoint import CheckpointError, load_checkpoint
from helpers.data import raw_folder


def merge_checkpoint(args: Namespace, argv: list[str], checkpoint: dict) -> None:
    """Take the checkpoint's settings for every flag not given; model flags must agree with it."""
    given, saved = flags.given(argv), checkpoint["args"]
    for flag in flags.MODEL_FLAGS:  # saved.get: older checkpoints lack newer model flags
        if flag in given and getattr(args, flag) != saved.get(flag):
            flags.fail(
                f"the checkpoint has {flag} {saved.get(flag)}, the flags say "
                f"{getattr(args, flag)}: drop --{flag.replace('_', '-')} to continue it, "
                "or start a new run"
            )
    for key, value in saved.items():
        if key not in given and key not in (*flags.MODE_FLAGS, *flags.INVOCATION_FLAGS):
            setattr(args, key, value)
    if "data_dir" not in given and "data_dir" in saved:
        args.data_dir = data_folder_here(saved["data_dir"], args.dataset)
    if args.resume and args.epochs <= checkpoint["epoch"]:
        flags.fail(
            f"the checkpoint has finished {checkpoint['epoch']} epochs already: "
            f"pass --epochs N with N > {checkpoint['epoch']} to train further"
        )
    if args.resume and (given & set(flags.SCHEDULE_FLAGS) or "lr_schedule" not in checkpoint):
        # a new lr schedule from here to --epochs (checkpoints without one had a constant lr)
        checkpoint["lr_schedule"] = {"start": checkpoint["epoch"], "end": args.epochs}


def data_folder_here(folder: str, dataset: str) -> str:
    """A checkpoint's --data-dir if it holds `dataset` on this machine, else the default (./data),
    saying so: a run moved from another machine reads its data where this one keeps it."""
    default = flags.build_parser().get_default("data_dir")
    if folder == default or raw_folder(dataset, folder).is_dir():
        return folder
    print(f"the checkpoint's --data-dir {folder} holds no {dataset} here: reading {default}")
    return default


def resolve(argv: list[str]) -> tuple[Namespace, dict | None]:
    """(flags, the checkpoint they name or None); exit 2 on a bad flag, before any data is
    read."""
    args = flags.parse(argv)
    source = args.resume or args.evaluate or args.generate
    checkpoint = None
    if source:
        try:
            checkpoint = load_checkpoint(source)
        except CheckpointError as error:
            flags.fail(str(error))
        merge_checkpoint(args, argv, checkpoint)
    flags.check(args)
    args.data_dir = os.path.abspath(args.data_dir)  # kept so: a resume from elsewhere finds it
    for kind, available in (
        ("cuda", torch.cuda.is_available),
        ("mps", torch.backends.mps.is_available),
    ):
        if args.device == kind and not available():
            flags.fail(
                f"--device {kind}: torch finds no {kind.upper()} device here; "
                "use --device auto or cpu"
            )
    return args, checkpoint


def pick_device(name: str) -> torch.device:
    """--device: auto is CUDA, then MPS, then the CPU."""
    if name == "auto":
        name = (
            "cuda"
            if torch.cuda.is_available()
            else "mps"
            if torch.backends.mps.is_available()
            else "cpu"
        )
    return torch.device(name)
