"""Variational autoencoders and latent diffusion on one likelihood scale (docs/vae.md)."""
