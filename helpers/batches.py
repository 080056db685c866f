"""An epoch's batches of training images, and the watch kept over its steps.

Iterating an EpochBatches gives the --batch-size batches of one epoch: a shuffled index into the
training split (one tensor on the device), binarized afresh under --binarize dynamic. Between
steps it does what the step itself need not show: the thread count tuned (threads.py), a Ctrl-C
that Python dropped raised again (ctrl_c.py), and every REPORT_EVERY steps one look at the losses
so far (the only host sync): the progress bar, and a stop on a non-finite loss.
"""

import math

import torch
from tqdm import tqdm

from helpers.ctrl_c import raise_if_ctrl_c
from helpers.runfiles import NonFiniteLoss
from helpers.threads import ThreadTuner

REPORT_EVERY = 50  # steps between two looks at the losses


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Batches in an epoch of `images`; the last may be smaller."""
    return math.ceil(images / batch_size)


class EpochBatches:
    """The batches of epoch `epoch`; record(loss) after each step keeps its loss on the device."""

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        binarize: str,
        epoch: int,
        threads: ThreadTuner,
    ) -> None:
        self.images, self.batch_size, self.binarize = images, batch_size, binarize
        self.epoch, self.threads = epoch, threads
        self.steps = steps_per_epoch(images.shape[0], batch_size)
        self.losses = torch.empty(self.steps, device=images.device)
        self.step = 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        self.threads.begin_epoch()
        n, size = self.images.shape[0], self.batch_size
        order = torch.randperm(n, device=self.images.device)
        checked = 0  # the steps whose losses were looked at
        progress = dict(desc=f"epoch {self.epoch}", unit="step", disable=None, leave=False)
        with tqdm(total=self.steps, **progress) as bar:
            for step in range(self.steps):
                self.step = step
                x = self.images[order[step * size : (step + 1) * size]]
                yield torch.bernoulli(x) if self.binarize == "dynamic" else x
                # the step is done: the thread tuner, a dropped Ctrl-C, now and then the losses
                self.threads.step()
                raise_if_ctrl_c()
                if (step + 1) % REPORT_EVERY == 0 or step + 1 == self.steps:
                    self._look_at_losses(checked, bar)
                    checked = step + 1

    def record(self, loss: torch.Tensor) -> None:
        """Keep this step's loss (a tensor on the device: no host sync)."""
        self.losses[self.step] = loss.detach()

    def _look_at_losses(self, checked: int, bar: tqdm) -> None:
        """Read the losses since the last look (a host sync): stop on a non-finite one, else show
        their mean on the progress bar."""
        recent = self.losses[checked : self.step + 1]
        if not torch.isfinite(recent).all():
            first = checked + int((~torch.isfinite(recent)).nonzero()[0])
            raise NonFiniteLoss(
                f"the loss became non-finite at epoch {self.epoch}, step {first + 1} of "
                f"{self.steps}"
            )
        bar.set_postfix(loss=f"{recent.mean().item():.2f}", refresh=False)
        bar.update(self.step + 1 - checked)

    def mean_loss(self) -> float:
        """The epoch's mean loss per image (the last batch weighted by its size)."""
        n, size = self.images.shape[0], self.batch_size
        last = n - (self.steps - 1) * size  # images in the last, possibly smaller, batch
        return ((self.losses[:-1].sum() * size + self.losses[-1] * last) / n).item()
