"""How well a model explains a split: the test loss (the −ELBO), and importance-weighted
estimates of log p(x) (Burda et al. 2015) with the IWAE training bound.

The ELBO of vae.py bounds log p(x) from below; k importance samples per image tighten the bound
towards log p(x) as k grows. Here: the weights, the bound as a training loss, the estimate on a
split (the final figure, and the cheap one watched every few epochs).
"""

import math
import time
from argparse import Namespace
from dataclasses import dataclass

import torch
from tqdm import tqdm

from helpers.messages import density_note
from vae import (
    GAUSSIAN_LOG_NORMALIZER,
    GAUSSIAN_VARIANCE,
    VAE,
    kl_per_dimension,
    reconstruction_loss,
    reparameterize,
)


def log_likelihood_given_z(logits: torch.Tensor, x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """log p(x|z) per image; for gaussian, the density with variance GAUSSIAN_VARIANCE per pixel."""
    nll = reconstruction_loss(logits, x, likelihood)
    if likelihood == "gaussian":
        nll = nll / (2 * GAUSSIAN_VARIANCE) + logits.shape[-1] * GAUSSIAN_LOG_NORMALIZER
    return -nll


def _log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, σ²) summed over the last dimension."""
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(dim=-1)


def log_importance_weights(
    model: VAE,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor,
    likelihood: str,
    stl: bool = False,
    dreg: bool = False,
) -> torch.Tensor:
    """log p(x, z) − log q(z|x) at z = μ + σ·ε: shape [n, B] for x [B, 784] and ε [n, B, latent].

    With `stl` (sticking the landing, Roeder et al. 2017) log q is computed with μ and log σ²
    detached: the same value, but its gradient no longer has the score term ∂ log q/∂(μ, log σ²).
    With `dreg` (doubly reparameterized, Tucker et al. 2018) also, and the gradient reaching each
    z_i is scaled by its normalized weight w̃_i: the IWAE bound's encoder gradient Σ w̃_i ∂log w_i
    becomes Σ w̃_i² ∂log w_i, unbiased where STL's is not for k > 1. The decoder's is unchanged.
    """
    z = reparameterize(mu, logvar, eps)
    q_mu, q_logvar = (mu.detach(), logvar.detach()) if stl or dreg else (mu, logvar)
    log_w = (
        log_likelihood_given_z(model.decode(z).float(), x, likelihood)
        + _log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
        - _log_normal(z, q_mu, q_logvar)
    )
    if dreg and z.requires_grad:
        weights = torch.softmax(log_w.detach(), dim=0).unsqueeze(-1)  # w̃_i, [n, B, 1]
        z.register_hook(lambda grad: grad * weights)
    return log_w


def negative_iw_bound(
    model: VAE,
    x: torch.Tensor,
    k: int,
    likelihood: str,
    stl: bool = False,
    eps: torch.Tensor | None = None,
    dreg: bool = False,
) -> torch.Tensor:
    """−(the importance-weighted bound with k samples), a per-image mean over the batch.

    The IWAE training loss (Burda et al. 2015); with k = 1 it is the negative ELBO with the KL
    estimated from the one sample instead of in closed form. For the gaussian likelihood it is in
    the test loss's units (squared error: −log p(x|z) less 784·GAUSSIAN_LOG_NORMALIZER).
    ε [k, B, latent] is drawn here unless given. `stl` and `dreg`: log_importance_weights.
    """
    x = x.reshape(x.shape[0], -1)
    mu, logvar = (t.float() for t in model.encode(x))
    if eps is None:
        eps = torch.randn((k, *mu.shape), device=mu.device, dtype=mu.dtype)
    log_w = log_importance_weights(model, x, mu, logvar, eps, likelihood, stl, dreg)
    bound = torch.logsumexp(log_w, 0)
    bound = bound - math.log(k)
    if likelihood == "gaussian":
        bound = bound + x.shape[-1] * GAUSSIAN_LOG_NORMALIZER
    return -bound.mean()


def importance_weighted_log_likelihood(
    model: VAE,
    x: torch.Tensor,
    k: int,
    likelihood: str,
    chunk: int = 100,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Importance-weighted estimate of log p(x) per image (Burda et al. 2015): shape [B].

    log (1/k) Σ_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x), computed with a running log-sum-exp over
    chunks of `chunk` samples so that memory stays bounded for any k.
    """
    x = x.reshape(x.shape[0], -1)
    mu, logvar = model.encode(x)
    total = torch.full((x.shape[0],), -math.inf, device=x.device)
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        eps = torch.randn((n, *mu.shape), device=mu.device, dtype=mu.dtype, generator=generator)
        log_w = log_importance_weights(model, x, mu, logvar, eps, likelihood)  # [n, B]
        total = torch.logaddexp(total, torch.logsumexp(log_w, dim=0))
    return total - math.log(k)


@dataclass(frozen=True)
class TestLoss:
    """The negative ELBO on a split, on the CPU: each image's, and the KL of each latent dimension.

    The KL bars sum to the KL: test_kl = Σ_u kl_per_dim[u]; the test loss is the mean of
    per_image (up to float rounding).
    """

    per_image: torch.Tensor  # [N] reconstruction + β·KL of each image
    recon: float  # the reconstruction error, mean per image
    kl_per_dim: torch.Tensor  # [d] float64: KL(q(z_u|x) ‖ N(0, 1)), mean per image, in nats
    beta: float

    @property
    def kl(self) -> float:
        return float(self.kl_per_dim.sum())

    def metrics(self) -> dict:
        """The metrics row's test loss, its two parts and the KL per dimension (to 4 decimals)."""
        return {
            "test_loss": self.recon + self.beta * self.kl,
            "test_recon": self.recon,
            "test_kl": self.kl,
            "test_kl_per_dim": [round(nats, 4) for nats in self.kl_per_dim.tolist()],
        }


@torch.inference_mode()
def test_loss(model, pixels, args: Namespace, batch: int = 5000) -> TestLoss:
    """Negative ELBO on a whole split, of each image and with its parts; the same ε every call
    (seeded). The results stay on the device until one copy to the CPU at the end."""
    model.eval()
    generator = torch.Generator(device=pixels.device).manual_seed(args.seed)
    recon, kl = [], []
    for x in pixels.split(batch):
        mu, logvar = model.encode(x)
        eps = torch.randn(mu.shape, device=mu.device, generator=generator)
        logits = model.decode(reparameterize(mu, logvar, eps))
        recon.append(reconstruction_loss(logits, x, args.likelihood).float())
        kl.append(kl_per_dimension(mu, logvar).float())
    recon, kl = torch.cat(recon), torch.cat(kl)
    per_image = (recon + args.beta * kl.sum(dim=1)).cpu()
    n = pixels.shape[0]
    recon_mean = float(recon.double().sum().cpu()) / n
    return TestLoss(per_image, recon_mean, kl.double().sum(dim=0).cpu() / n, args.beta)


@torch.inference_mode()
def per_image_log_likelihood(
    model, pixels, args, k: int, progress: str | None = None
) -> torch.Tensor:
    """Importance-weighted log p(x) with k samples of each image of `pixels` ([N], on the CPU),
    the same ε every call (seeded); with a progress bar titled `progress`. Nothing is read back
    from the device before the end."""
    model.eval()
    generator = torch.Generator(device=pixels.device).manual_seed(args.seed)
    # on a CPU, chunks of 20 samples of 100 images (2,000 rows a layer) stay in its caches
    # (docs/speed.md, "The k=5000 estimate"); a GPU wants larger ones
    chunk = 20 if pixels.device.type == "cpu" else 500
    batches = pixels.split(100)
    estimates = [
        importance_weighted_log_likelihood(model, x, k, args.likelihood, chunk, generator)
        for x in tqdm(batches, desc=progress, unit="batch", mininterval=5, disable=not progress)
    ]
    return torch.cat(estimates).cpu()


def watch_estimate(model, test, args, epoch: int) -> dict:
    """Every --watch-every epochs, −log p(x) with k = --watch-k on the first --watch-images test
    images: a cheap view of the log-likelihood; else nothing."""
    if not args.watch_every or epoch % args.watch_every:
        return {}
    images = test[: args.watch_images]
    return {
        "watch_nll": -float(per_image_log_likelihood(model, images, args, args.watch_k).mean()),
        "watch_k": args.watch_k,
        "watch_images": images.shape[0],
    }


def log_likelihood(model, pixels, args: Namespace, k: int, epoch: int) -> dict:
    """Importance-weighted log p(x) with k samples on a split: printed, and a metrics row."""
    start = time.perf_counter()
    log_p = per_image_log_likelihood(model, pixels, args, k, progress=f"log-likelihood, k={k}")
    mean = float(log_p.double().mean())
    error = float(log_p.double().std() / len(log_p) ** 0.5) if len(log_p) > 1 else 0.0
    print(
        f"test log-likelihood (importance-weighted, k={k}, epoch {epoch}): {mean:.2f} nats per "
        f"image (± {error:.2f}, its standard error over the images); negative: {-mean:.2f}. "
        f"Of {density_note(args)}"
    )
    return {
        "evaluation": "importance-weighted",
        "epoch": epoch,
        "k": k,
        "test_log_likelihood": mean,
        "test_nll": -mean,
        "test_nll_standard_error": error,
        "likelihood": args.likelihood,
        "decoder_variance": GAUSSIAN_VARIANCE if args.likelihood == "gaussian" else None,
        "eval_seconds": time.perf_counter() - start,
    }
