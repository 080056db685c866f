"""The two modes that use a checkpoint without training: --evaluate and --generate."""

from argparse import Namespace

import torch

from helpers import data, likelihood
from helpers.checkpoint import append_metrics
from helpers.latent import MAP_IMAGES, active_units, latent_map, latent_means
from helpers.runfiles import RunFolder, build_model, restore, writing
from helpers.viewer import figures, fixed_inputs, save_pngs


def evaluate(args: Namespace, checkpoint: dict, folder: RunFolder, device: torch.device) -> int:
    """--evaluate: the test loss and an importance-weighted log-likelihood of a checkpoint."""
    model = build_model(args, device)
    restore(model, None, checkpoint, args)
    test = data.load(args, device, train=False).test
    elbo = likelihood.test_loss(model, test, args)
    print(
        f"test loss {elbo['test_loss']:.2f} per image (reconstruction {elbo['test_recon']:.2f} "
        f"+ KL {elbo['test_kl']:.2f})"
    )
    row = likelihood.log_likelihood(model, test, args, args.eval_k or 5000, checkpoint["epoch"])
    writing(append_metrics, folder.metrics, {**row, **elbo})
    return 0


def generate(args: Namespace, checkpoint: dict, folder: RunFolder, device: torch.device) -> int:
    """--generate: the pictures of a checkpoint and its latent map as PNGs, no training."""
    model = build_model(args, device)
    restore(model, None, checkpoint, args)
    splits = data.load(args, device, train=False)
    images, z, nrow = fixed_inputs(args, splits.test, device)
    means = latent_means(model, splits.test[:MAP_IMAGES])
    activity = active_units(means)
    shown = figures(model.eval(), images, z, checkpoint["epoch"], nrow, activity)
    names = data.class_names(args.dataset)
    latent = latent_map(means, splits.map_labels, names, activity, checkpoint["epoch"])
    names = writing(save_pngs, folder.out, shown, latent)
    print(f"wrote {', '.join(names)} to {args.out}")
    return 0
