"""cryoprism.classify2d"""
