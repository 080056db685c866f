"""The model and Adam of a run: built from its flags, or their state restored from a checkpoint."""

from argparse import Namespace

import torch

from helpers.checkpoint import CheckpointError
from helpers.schedules import set_lr
from vae import VAE


def build_model(args: Namespace, device: torch.device) -> VAE:
    sizes = (784, tuple(args.hidden), args.latent_dim)
    return VAE(*sizes, args.activation, args.decoder_activation).to(device)


def build_optimizer(model: VAE, args: Namespace) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=args.lr, eps=args.adam_eps, fused=True)


def restore(
    model: VAE, optimizer: torch.optim.Adam | None, checkpoint: dict, args: Namespace
) -> None:
    """Load the checkpoint's weights (and optimizer state), or a CheckpointError saying why not."""
    try:
        model.load_state_dict(checkpoint["model"])
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
            set_lr(optimizer, args.lr)
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"the checkpoint does not fit this model ({str(error).splitlines()[0]}): "
            "start a new run or give the flags it was made with"
        ) from None


def trained_model(args: Namespace, checkpoint: dict, device: torch.device) -> VAE:
    """The checkpoint's model built from `args` and loaded (no optimizer), in eval mode."""
    model = build_model(args, device)
    restore(model, None, checkpoint, args)
    return model.eval()
