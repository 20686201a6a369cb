"""reasoner.rollout"""
