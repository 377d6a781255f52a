"""cryoprism.report"""
