"""cryoprism.abinitio"""
