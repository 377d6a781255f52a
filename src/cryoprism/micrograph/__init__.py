"""cryoprism.micrograph"""
