"""reasoner.serving: running a model behind one call, and serving it over HTTP.

backends.py: `Backend.generate(messages, n, Sampling) -> [Generation]` for a local checkpoint (on the one
generation function, reasoner.generation), any OpenAI-compatible server, or a script (tests).
server.py: `reasoner serve`, an OpenAI-compatible chat-completions server over a backend.
Nothing heavy is imported here.
"""
