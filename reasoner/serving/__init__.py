"""reasoner.serving: running a model behind one call, and serving it over HTTP.

backends.py: `Backend.generate(messages, n, Sampling) -> [Generation]` for a local checkpoint (on the one
generation function, reasoner.generation), any OpenAI-compatible server (the `openai` client), or a script (tests).
The server (`reasoner serve`, docs/serving.md), one job per module:
  server.py          FastAPI routes, the uvicorn server (ChatServer), settings and limits
  schemas.py         the OpenAI request/response as pydantic models; the 400 messages
  batcher.py         dynamic batching: requests that arrive together share one model call per segment
  completions.py     a completion, whole or streamed (SSE), from the batcher or the pipeline model
  pipeline_model.py  `reasoner-pipeline`: Reasoner.solve behind a chat completion
  reasoning.py       <think> split into reasoning_content, whole or streamed
  guards.py          connection, body, key and concurrency limits
Nothing heavy is imported here.
"""
