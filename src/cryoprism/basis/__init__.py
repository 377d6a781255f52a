"""cryoprism.basis"""
