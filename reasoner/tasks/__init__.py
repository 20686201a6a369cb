"""reasoner.tasks"""
