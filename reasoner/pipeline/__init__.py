"""reasoner.pipeline"""
