"""reasoner.verify"""
