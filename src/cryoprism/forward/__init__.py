"""cryoprism.forward"""
