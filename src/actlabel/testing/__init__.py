"""Test tooling shipped with the package: a real OpenAI-compatible server for tests and benchmarks.

Needs starlette and uvicorn (the `review` extra).
"""

from .openai_server import Fault, OpenAICompatServer, RecordedRequest, Reply

__all__ = ["Fault", "OpenAICompatServer", "RecordedRequest", "Reply"]
