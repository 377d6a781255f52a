"""cryoprism.reconstruct"""
