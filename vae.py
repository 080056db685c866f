"""The variational autoencoder and its losses: pure functions of tensors, no I/O.

Units: every loss is per image (summed over the 784 pixels and the latent dimensions) and
averaged over the batch, so the numbers read as nats (or squared error) per image.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}
LIKELIHOODS = ("gaussian", "bernoulli")
# The gaussian likelihood is the MSE loss read as a density: N(x; x_hat, 1/2) per pixel has
# -log p = (x - x_hat)^2 + log(pi)/2, so the squared error is -log p(x|z) less this constant.
GAUSSIAN_VARIANCE = 0.5
GAUSSIAN_LOG_NORMALIZER = 0.5 * math.log(2 * math.pi * GAUSSIAN_VARIANCE)


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers through `sizes`, with `activation` between them and none after the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """MLP VAE: encoder input→hidden→(μ, log σ²), decoder latent→reversed hidden→pixel logits.

    The decoder's activation is the encoder's unless `decoder_activation` names another; neither
    has parameters, so the state dicts are the same either way.

    The encoder's last layer is linear, so μ and log σ² take any real value. The decoder returns
    logits; `torch.sigmoid(logits)` is the image, and the losses work from the logits directly.
    """

    def __init__(
        self,
        input_dim: int = 784,
        hidden: tuple[int, ...] = (256, 64),
        latent_dim: int = 10,
        activation: str = "relu",
        decoder_activation: str | None = None,
    ) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.latent_dim = latent_dim
        self.encoder = mlp([input_dim, *hidden, 2 * latent_dim], activation)
        decoder_sizes = [latent_dim, *reversed(hidden), input_dim]
        self.decoder = mlp(decoder_sizes, decoder_activation or activation)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B,1,28,28] or [B,784] images → (μ, log σ²), each [B, latent_dim]."""
        mu, logvar = self.encoder(x.reshape(x.shape[0], self.input_dim)).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes [..., latent_dim] → pixel logits [..., input_dim]."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (pixel logits [B,784], μ, log σ²); the reconstruction is sigmoid(logits)."""
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar)), mu, logvar

    @torch.no_grad()
    def start_at_mean_image(self, mean_image: torch.Tensor) -> None:
        """Set the decoder's output bias to the logits of `mean_image` (the training set's mean).

        A new decoder then draws about the average digit for every z instead of uniform grey, so the
        first steps need not learn it, and the first epoch ends lower in test loss (docs/speed.md).
        """
        self.decoder[-1].bias.copy_(torch.logit(mean_image.reshape(self.input_dim), eps=1e-3))


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None
) -> torch.Tensor:
    """z = μ + σ·ε with σ = exp(½ log σ²) and ε ~ N(0, I) (drawn here unless given)."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) in closed form for each latent dimension: shape of mu."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) in closed form, summed over latent dimensions: shape [B]."""
    return kl_per_dimension(mu, logvar).sum(dim=-1)


def reconstruction_loss(
    logits: torch.Tensor, x: torch.Tensor, likelihood: str = "gaussian"
) -> torch.Tensor:
    """Per-image reconstruction error, summed over pixels: shape of logits less its last dim.

    x is [B, ...] (any image layout); logits are [B, 784] or [k, B, 784] (k samples per image).

    gaussian: squared error between sigmoid(logits) and x (the MSE+KL design);
    bernoulli: binary cross-entropy from the logits, i.e. -log p(x|z), numerically stable.
    """
    x = x.reshape(x.shape[0], -1).expand_as(logits)
    if likelihood == "gaussian":
        return (torch.sigmoid(logits) - x).pow(2).sum(dim=-1)
    if likelihood == "bernoulli":
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=-1)
    raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")


def negative_elbo(
    logits: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float = 1.0,
    likelihood: str = "gaussian",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reconstruction + β·KL, reconstruction, KL), each a per-image mean over the batch; in
    float32 whatever precision the forward pass ran in (bf16 under autocast)."""
    recon = reconstruction_loss(logits.float(), x, likelihood).mean()
    kl = kl_divergence(mu.float(), logvar.float()).mean()
    return recon + beta * kl, recon, kl
