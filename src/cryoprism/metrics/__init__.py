"""cryoprism.metrics"""
