"""Serving Eagle with transformers' own OpenAI-compatible server (``transformers serve``): ``eagle serve``.

    eagle serve eagle-tiny --port 8000        # then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")

- ``adaptation``: what transformers' serving stack lacks for Eagle, installed in place (``install()``); the only
  module touching its internals, importing nothing from this package.
- ``server``: ``serve()``, the adaptation and transformers' ``Serve`` pinned to one model; ``running_server()``, a
  server subprocess that is always stopped.
- ``measure``: ``measure_serving()``, the server against ``model.generate`` on the same prompts (``eagle bench``).

Importing this package imports neither torch nor transformers.
"""

from .adaptation import check_stack, install
from .measure import measure_serving
from .server import eagle_serve_command, free_port, running_server, serve

__all__ = [
    "check_stack",
    "eagle_serve_command",
    "free_port",
    "install",
    "measure_serving",
    "running_server",
    "serve",
]
