"""cryoprism.image"""
