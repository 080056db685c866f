"""The model and its losses: closed forms against Monte Carlo, gradients, layouts, learning."""

import math

import pytest
import torch

from helpers.likelihood import importance_weighted_log_likelihood, log_likelihood_given_z
from vae import VAE, kl_divergence, negative_elbo, reparameterize


def test_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3) * 0.5
    z = reparameterize(mu.expand(200_000, 4, 3), logvar.expand(200_000, 4, 3))
    std = torch.exp(0.5 * logvar)
    log_q = torch.distributions.Normal(mu, std).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    monte_carlo = (log_q - log_p).mean(0)
    torch.testing.assert_close(kl_divergence(mu, logvar), monte_carlo, atol=0.02, rtol=0.01)
    assert torch.all(kl_divergence(torch.zeros(2, 5), torch.zeros(2, 5)) == 0)


def test_reparameterized_samples_have_the_right_moments_and_gradients():
    torch.manual_seed(0)
    mu = torch.tensor([1.5, -2.0], requires_grad=True)
    logvar = torch.tensor([-1.0, 0.7], requires_grad=True)
    z = reparameterize(mu.expand(100_000, 2), logvar.expand(100_000, 2))
    torch.testing.assert_close(z.mean(0), mu.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), logvar.detach().exp(), atol=0.0, rtol=0.03)
    z.pow(2).mean().backward()
    assert mu.grad is not None and torch.all(mu.grad != 0)
    assert logvar.grad is not None and torch.all(logvar.grad != 0)


def test_both_input_layouts_give_the_same_output():
    torch.manual_seed(0)
    model = VAE()
    images = torch.rand(5, 1, 28, 28)
    mu_a, logvar_a = model.encode(images)
    mu_b, logvar_b = model.encode(images.reshape(5, 784))
    torch.testing.assert_close(mu_a, mu_b)
    torch.testing.assert_close(logvar_a, logvar_b)
    logits, mu, logvar = model(images)
    assert logits.shape == (5, 784) and mu.shape == logvar.shape == (5, 10)
    loss_4d = negative_elbo(logits, images, mu, logvar)[0]
    loss_2d = negative_elbo(logits, images.reshape(5, 784), mu, logvar)[0]
    torch.testing.assert_close(loss_4d, loss_2d)


def test_mu_and_logvar_can_be_negative():
    torch.manual_seed(0)
    mu, logvar = VAE().encode(torch.rand(64, 784))
    assert (mu < 0).any() and (mu > 0).any()
    assert (logvar < 0).any() and (logvar > 0).any()


def test_a_decoder_started_at_the_mean_image_draws_about_it():
    torch.manual_seed(0)
    mean_image = (torch.rand(28, 28) * torch.linspace(0, 1, 28)).reshape(
        784
    )  # a column of zeros, too
    model = VAE()

    def distance() -> torch.Tensor:
        return (torch.sigmoid(model.decode(torch.randn(256, 10))) - mean_image).abs().mean()

    before = distance()
    model.start_at_mean_image(mean_image.reshape(1, 28, 28))
    assert distance() < before / 3
    torch.testing.assert_close(
        torch.sigmoid(model.decoder[-1].bias), mean_image.clamp(1e-3, 1 - 1e-3)
    )


def test_architecture_follows_the_flags():
    model = VAE(hidden=(200, 200), latent_dim=50, activation="tanh")
    widths = [layer.out_features for layer in model.encoder if isinstance(layer, torch.nn.Linear)]
    assert widths == [200, 200, 100]
    widths = [layer.out_features for layer in model.decoder if isinstance(layer, torch.nn.Linear)]
    assert widths == [200, 200, 784]
    assert isinstance(model.encoder[1], torch.nn.Tanh)
    assert isinstance(model.encoder[-1], torch.nn.Linear) and isinstance(
        model.decoder[-1], torch.nn.Linear
    )
    assert len(VAE(hidden=(32,)).encoder) == 3


def test_bernoulli_loss_is_stable_for_extreme_logits():
    logits = torch.tensor([[-200.0, 200.0, 0.0]])
    x = torch.tensor([[0.0, 1.0, 1.0]])
    loss = -log_likelihood_given_z(logits, x, "bernoulli")
    torch.testing.assert_close(loss, torch.tensor([math.log(2)]))
    mismatched = -log_likelihood_given_z(logits, torch.tensor([[1.0, 0.0, 1.0]]), "bernoulli")
    torch.testing.assert_close(mismatched, torch.tensor([400 + math.log(2)]))


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_loss_falls_on_a_small_synthetic_set(likelihood):
    torch.manual_seed(0)
    prototypes = (torch.rand(8, 784) < 0.3).float()
    x = prototypes[torch.randint(0, 8, (256,))]
    x = torch.where(torch.rand(256, 784) < 0.05, 1 - x, x)
    model = VAE(hidden=(64, 32), latent_dim=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        logits, mu, logvar = model(x)
        loss = negative_elbo(logits, x, mu, logvar, likelihood=likelihood)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def small_model_and_data(latent_dim: int, pixels: int = 20) -> tuple[VAE, torch.Tensor]:
    """A small VAE trained briefly on binary data, so that q(z|x) is a fair proposal."""
    torch.manual_seed(0)
    x = (torch.rand(512, pixels) < torch.linspace(0.1, 0.9, pixels)).float()
    model = VAE(input_dim=pixels, hidden=(32,), latent_dim=latent_dim, activation="tanh")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        logits, mu, logvar = model(x)
        loss = negative_elbo(logits, x, mu, logvar, likelihood="bernoulli")[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().requires_grad_(False)
    return model, x[:8]


def test_importance_weighted_estimate_with_k1_is_the_elbo_in_expectation():
    model, x = small_model_and_data(latent_dim=3)
    generator = torch.Generator().manual_seed(1)
    estimates = torch.stack(
        [
            importance_weighted_log_likelihood(model, x, 1, "bernoulli", generator=generator)
            for _ in range(4000)
        ]
    )
    mu, logvar = model.encode(x)
    z = reparameterize(mu.expand(20000, *mu.shape), logvar.expand(20000, *mu.shape))
    elbo = log_likelihood_given_z(model.decode(z), x, "bernoulli").mean(0) - kl_divergence(
        mu, logvar
    )
    torch.testing.assert_close(estimates.mean(0), elbo, atol=0.05, rtol=0)


def test_importance_weighted_estimate_rises_with_k():
    model, x = small_model_and_data(latent_dim=3)
    generator = torch.Generator().manual_seed(2)
    means = [
        torch.stack(
            [
                importance_weighted_log_likelihood(
                    model, x, k, "bernoulli", chunk=7, generator=generator
                )
                for _ in range(200)
            ]
        )
        .mean()
        .item()
        for k in (1, 10, 100)
    ]
    assert means[0] < means[1] < means[2]


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_importance_weighted_estimate_converges_to_the_exact_likelihood_with_a_1d_latent(
    likelihood,
):
    model, x = small_model_and_data(latent_dim=1, pixels=100)
    z = torch.linspace(-12, 12, 48001)[:, None, None].expand(-1, x.shape[0], 1)  # [grid, B, 1]
    log_joint = log_likelihood_given_z(model.decode(z), x, likelihood) + torch.distributions.Normal(
        0.0, 1.0
    ).log_prob(z[..., 0])
    exact = torch.logsumexp(log_joint, dim=0) + math.log(24 / 48000)
    generator = torch.Generator().manual_seed(3)
    k1 = torch.stack(
        [
            importance_weighted_log_likelihood(model, x, 1, likelihood, generator=generator)
            for _ in range(100)
        ]
    ).mean(0)
    k5000 = importance_weighted_log_likelihood(
        model, x, 5000, likelihood, chunk=333, generator=generator
    )
    torch.testing.assert_close(k5000, exact, atol=0.05, rtol=0)
    assert (k5000 - exact).abs().mean() < 0.3 * (exact - k1).mean()  # far closer than the ELBO
