"""cryoprism — cryo-EM single-particle analysis.

Sub-packages, from the bottom layer up: parallel, fourier → io → image, ctf, geometry, metrics →
forward → reconstruct, basis → heterogeneity, classify2d, denoise, abinitio, micrograph → report, cli.
Conventions (axes, FFT centring, RELION Euler angles, origins, CTF) are in docs/conventions.md.
"""

__version__ = "0.1.0"
