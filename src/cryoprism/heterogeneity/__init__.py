"""cryoprism.heterogeneity"""
