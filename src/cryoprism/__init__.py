"""cryoprism — cryo-EM single-particle analysis.

Sub-packages, from the bottom layer up: parallel, fourier → io → image, ctf, geometry, metrics →
forward → reconstruct, basis → heterogeneity, classify2d, denoise, abinitio, micrograph → report, cli.
Conventions (axes, FFT centring, RELION Euler angles, origins, CTF) are in docs/conventions.md.
"""

import logging as _logging

__version__ = "0.1.0"

# Library messages go to the "cryoprism" logger (level INFO, so a job's log file holds them); an
# application (the CLI, or logging.basicConfig) decides where else they appear.
_logging.getLogger("cryoprism").addHandler(_logging.NullHandler())
_logging.getLogger("cryoprism").setLevel(_logging.INFO)
