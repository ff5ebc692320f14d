"""Variational autoencoders and latent diffusion on one likelihood scale (``docs/vae.md``): the ELBO and
IWAE (:mod:`~difflab.vae.elbo`), a convolutional VAE, the Markovian hierarchical VAE, the KL autoencoder
with spatial latents, latent diffusion and its LSGM bound; :mod:`difflab.vae.jobs` runs them from
run folders."""

from .autoencoder import KLAutoencoder
from .elbo import ELBOTerms, iwae_bound, kl_standard_normal, markov_elbo_terms, markov_log_weights
from .hvae import HierarchicalVAE
from .latent import LatentBound, LatentDiffusion, latent_scale, lsgm_bound
from .vae import ConvVAE, LatentVariableModel

__all__ = [
    "ConvVAE",
    "ELBOTerms",
    "HierarchicalVAE",
    "KLAutoencoder",
    "LatentBound",
    "LatentDiffusion",
    "LatentVariableModel",
    "iwae_bound",
    "kl_standard_normal",
    "latent_scale",
    "lsgm_bound",
    "markov_elbo_terms",
    "markov_log_weights",
]
