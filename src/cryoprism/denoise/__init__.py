"""cryoprism.denoise"""
