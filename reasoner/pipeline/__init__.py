"""reasoner.pipeline: decomposed, verified solving (LangGraph), behind reasoner.api.Reasoner.

graph.py (nodes, edges), plans.py (plan format, SFT examples), backends.py (local / OpenAI HTTP /
scripted), checks.py (verdicts), recording.py (the trace), server.py (`reasoner serve`),
evaluate.py (direct vs pipeline for the demo). Nothing heavy is imported here.
"""
