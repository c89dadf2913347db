"""LPM-Net: 3D multimodal medical image fusion (axis-decomposed dense convolutions + windowed Mamba).

The package holds all the real logic of the project; the Snakemake workflow only calls it.
"""

__version__ = "0.1.0"
