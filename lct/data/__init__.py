"""Datasets, the VAE codec and the encoding into latents."""
