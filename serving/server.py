"""Run transformers' OpenAI-compatible server on an Eagle folder (``eagle serve``), and run one as a subprocess."""

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .adaptation import install


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    dtype: str = "auto",
    device: str = "auto",
    attn_implementation: str | None = None,
    quantization: str | None = None,
    continuous_batching: bool = False,
    image_dir=None,
    log_level: str = "warning",
) -> None:
    """Serve ``model`` (a folder or a Hub id) at ``http://host:port/v1`` until interrupted: transformers' ``Serve``
    pinned to that model, after ``install()``. Clients name the model as given here, or leave it out."""
    # Registers the Auto classes, here and in transformers' engine process: folders load without remote code.
    install(image_dir=image_dir, register=("eagle_hub.modeling_eagle",))
    from transformers.cli.serve import Serve

    print(
        f"eagle serve: loading {model}, then serving it at http://{host}:{port}/v1 (model name: {model})", flush=True
    )
    Serve(
        force_model=model,
        host=host,
        port=port,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        quantization=quantization,
        continuous_batching=continuous_batching,
        log_level=log_level,
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def eagle_serve_command(model, port: int, *options: str) -> list[str]:
    """The command line of ``eagle serve MODEL --port PORT OPTIONS`` with this interpreter."""
    return [sys.executable, "-m", "eagle_hub.cli", "serve", str(model), "--port", str(port), *options]


@contextlib.contextmanager
def running_server(command: list[str], port: int, log_path, *, env=None, timeout: float = 300.0):
    """Run ``command``, a server listening on 127.0.0.1:``port``, until its ``/health`` answers, and yield its
    base URL (``http://127.0.0.1:PORT/v1``); the process is always stopped on leaving, whatever happened."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with status {process.returncode}:\n{tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer within {timeout:.0f} s:\n{tail(log_path)}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            time.sleep(0.25)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tail(log_path, lines: int = 40) -> str:
    return "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-lines:])
