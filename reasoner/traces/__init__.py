"""reasoner.traces"""
