"""lct: Improved Training Technique for Latent Consistency Models (Dao et al., ICLR 2025)."""

__version__ = "0.1.0"
