"""Pre-processing: from movies to particles (motion correction, CTF per micrograph, picking, extraction)."""
