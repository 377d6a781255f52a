"""From movies to particles: motion correction, CTF per micrograph, picking and extraction."""
