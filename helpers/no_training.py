"""The modes that use a checkpoint without training: --evaluate and --generate (main.py trains)."""

from argparse import Namespace

import torch

from helpers import data, likelihood
from helpers.checkpoint import append_metrics
from helpers.latent import MAP_IMAGES, active_units, latent_means
from helpers.models import trained_model
from helpers.pictures import TestPass, fixed_inputs, pictures, save_pngs
from helpers.runfiles import RunFolder, disk_write


def evaluate(args: Namespace, checkpoint: dict, folder: RunFolder, device: torch.device) -> int:
    """--evaluate: the test loss and an importance-weighted log-likelihood of a checkpoint."""
    model = trained_model(args, checkpoint, device)
    test = data.load(args, device, train=False).test
    elbo = likelihood.test_loss(model, test, args).metrics()
    print(
        f"test loss {elbo['test_loss']:.2f} per image (reconstruction {elbo['test_recon']:.2f} "
        f"+ KL {elbo['test_kl']:.2f})"
    )
    row = likelihood.log_likelihood(model, test, args, args.eval_k or 5000, checkpoint["epoch"])
    disk_write(append_metrics, folder.metrics, {**row, **elbo})
    return 0


def generate(args: Namespace, checkpoint: dict, folder: RunFolder, device: torch.device) -> int:
    """--generate: the pictures of a checkpoint, its latent map and its KL per dimension as PNGs,
    no training (a test pass gives the least likely images and the KL)."""
    model = trained_model(args, checkpoint, device)
    splits = data.load(args, device, train=False)
    means = latent_means(model, splits.test[:MAP_IMAGES])
    tested = TestPass(means, active_units(means), likelihood.test_loss(model, splits.test, args))
    inputs, names = fixed_inputs(args, splits.test, device), data.class_names(args.dataset)
    shown = pictures(
        model, inputs, splits.test, splits.test_labels, names, checkpoint["epoch"], tested
    )
    written = disk_write(save_pngs, folder.out, *shown)
    print(f"wrote {', '.join(written)} to {args.out}")
    return 0
