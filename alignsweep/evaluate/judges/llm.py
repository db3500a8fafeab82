"""A pairwise LLM judge over an OpenAI-compatible chat-completions API.

For each comparison the judge is shown the task prompt and the two answers (policy sample and
reference) and asked which is better (`alignsweep.evaluate.judges.prompts`):

- **Position bias**: the two answers are presented in a pseudo-random order, drawn per comparison
  from a hash of (`judge.seed`, prompt, sample, reference): half the samples are shown first, the
  same comparison is always shown the same way (so a re-evaluation hits the cache), and a judge
  that favours one position adds noise instead of bias. `judge.order=both` asks both orders and
  averages them (an inconsistent judge then counts as a tie); it costs twice the calls. The
  metric `judge_first_preferred` (share of verdicts for the answer shown first; 0.5 = no
  position bias) shows how biased the judge is.
- **Verdicts** are read by `parse_verdict`: the last `Preferred:` / `More helpful:` line (or a
  bare "A"/"B" answer). An answer with no readable verdict is *not* guessed: its outcome is NaN,
  the evaluation counts it as `unparseable` and leaves it out of the win rate. An explicit "tie" /
  "neither" / "equal" is a tie (0.5).
- **Failures**: 408/409/429, 5xx, connection errors and timeouts are retried up to
  `judge.max_retries` times with exponential back-off (`judge.backoff_s` doubling per retry, with
  jitter, at most `judge.max_backoff_s`; a `Retry-After` header is honoured within that bound).
  Any other error status, or a request still failing after its retries, raises `JudgeError`:
  a failed API call is never turned into a verdict.
- **Concurrency**: at most `judge.concurrency` requests in flight (a thread pool).
- **Cache**: every answer is stored on disk under `judge.cache_dir`, one JSON file per key, written
  atomically (temporary file + rename, safe for concurrent jobs and shared file systems), as soon
  as it arrives. The key is the SHA-256 of (judge model, template text, prompt, both answers in
  presented order, temperature, max_tokens), so re-evaluating, resuming or a second job with the
  same samples costs no repeated calls; the cached raw answer is re-parsed on reading.
- **Secret**: the API key is read from the environment variable named by `judge.api_key_env` when
  the judge is built (in the worker, not at dry-run time) and only ever sent in the
  `Authorization` header; it is never stored in the config, the cache, metrics or logs, and is
  redacted from error messages that echo it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

from alignsweep.evaluate.judges import prompts as templates
from alignsweep.evaluate.judges.base import (
    NO_VERDICT,
    REFERENCE_WINS,
    SAMPLE_WINS,
    TIE,
    JudgeError,
    JudgeResult,
)

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429})
DEFAULT_MODEL = "gpt-4-turbo-2024-04-09"

_LABEL = re.compile(
    r"^[^\w\n]*(?:preferred|more\s+helpful|better|verdict|answer|choice|winner|final\s+answer)\b[^:\n]*:(.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_LETTER = re.compile(  # the letter itself is upper case: "Preferred: a longer one" names no answer
    r"^[\s\"'*`(\[<{]*(?:(?:summary|response|answer|option)\s+)?((?-i:[AB]))(?![\w])"
    r"(?!\s*(?:or|and|/|&|,|vs\.?)\s*[\"'*`(\[<]*(?:(?:summary|response|answer|option)\s+)?[AB]\b)",
    re.IGNORECASE,
)
_TIE = re.compile(r"^[\s\"'*`(\[<{]*(?:tie|neither|equal|equally|both|none)\b", re.IGNORECASE)
_BARE = re.compile(r"^[\s\"'*`(\[<{]*([AB])[\s\"'*`)\]>}.!]*$", re.IGNORECASE)


def parse_verdict(content: Optional[str]) -> Optional[str]:
    """"A", "B" or "tie" from a judge's answer, or None when it states no readable verdict.

    Read, in order: the last line labelled `Preferred:` / `More helpful:` (and a few synonyms) whose
    value starts with A or B (optionally "Summary A", quoted or in bold) and does not go on to name
    the other letter ("A or B"); an explicit tie ("tie", "neither", "equal", "both"); else an answer,
    or a last line, consisting of the letter alone. Anything else is unparseable.
    """
    if not content:
        return None
    for match in reversed(list(_LABEL.finditer(content))):
        value = match.group(1).strip()
        if not value:
            continue
        letter = _BARE.match(value) or _LETTER.match(value)
        if letter:
            return letter.group(1).upper()
        if _TIE.match(value):
            return "tie"
        return None  # the last labelled line is the verdict; an unreadable one is not guessed past
    lines = [line for line in content.strip().splitlines() if line.strip()]
    for candidate in (content.strip(), lines[-1] if lines else ""):
        bare = _BARE.match(candidate)
        if bare:
            return bare.group(1).upper()
    return None


def presentation_order(seed: int, prompt: str, sample: str, reference: str) -> bool:
    """True when the sample is shown first: a fair coin from a hash of the seed and the texts."""
    digest = hashlib.sha256(json.dumps([seed, prompt, sample, reference]).encode()).digest()
    return digest[0] & 1 == 1


class VerdictCache:
    """Raw judge answers on disk, one JSON file per key (ROOT/ab/abcdef....json), written atomically."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Optional[dict]:
        try:
            return json.loads(self.path(key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # unreadable or torn by a crashed writer elsewhere: ask again
            return None

    def put(self, key: str, record: dict) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "w") as fh:
                fh.write(json.dumps(record, sort_keys=True))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


class LLMJudge:
    """Pairwise judge over `POST {base_url}/chat/completions` (see the module docstring)."""

    name = "llm"

    def __init__(
        self,
        *,
        base_url: str,
        model: str = DEFAULT_MODEL,
        api_key: Optional[str] = None,
        prompt: str = "instruction",
        order: str = "random",
        seed: int = 0,
        temperature: float = 0.0,
        max_tokens: int = 256,
        concurrency: int = 8,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 120.0,
        cache_dir: Optional[str | os.PathLike] = None,
    ):
        import httpx

        if order not in ("random", "both"):
            raise ValueError(f"judge.order: expected random or both, got {order!r}")
        if prompt not in templates.TEMPLATES:
            raise ValueError(f"judge.prompt: expected one of {', '.join(templates.TEMPLATES)}, got {prompt!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.prompt_name = prompt
        self.template = templates.TEMPLATES[prompt]
        self.order = order
        self.seed = seed
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.cache = VerdictCache(cache_dir) if cache_dir else None
        self._secret = api_key or None
        headers = {"Content-Type": "application/json"}
        if self._secret:
            headers["Authorization"] = f"Bearer {self._secret}"
        self._client = httpx.Client(
            timeout=timeout_s,
            headers=headers,
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._counts = {"requests": 0, "retries": 0}

    def __repr__(self) -> str:  # never the key
        return f"LLMJudge(model={self.model!r}, base_url={self.base_url!r}, prompt={self.prompt_name!r})"

    def close(self) -> None:
        self._client.close()

    # -- one request --------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def _delay(self, retry: int, retry_after: Optional[str]) -> float:
        delay = min(self.max_backoff_s, self.backoff_s * (2**retry))
        with self._lock:
            delay *= 0.5 + 0.5 * self._rng.random()  # jitter: concurrent retries do not return in step
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass  # an HTTP date: keep our own delay
        return min(delay, self.max_backoff_s)

    def ask(self, text: str) -> str:
        """The judge model's answer to one user message, with retries; raises JudgeError."""
        import httpx

        url = f"{self.base_url}/chat/completions"
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": text}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count("retries")
            self._count("requests")
            retry_after = None
            try:
                response = self._client.post(url, json=body)
            except httpx.TransportError as exc:  # connection refused/reset, timeouts, protocol errors
                last = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        message = response.json()["choices"][0]["message"]
                        return message.get("content") or ""
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        last = f"200 with a malformed body: {response.text[:200]!r}"
                elif status in RETRY_STATUS or status >= 500:
                    last = f"HTTP {status}: {response.text[:200]}"
                    retry_after = response.headers.get("retry-after")
                else:
                    raise JudgeError(
                        self._redact(f"llm judge: {url} answered HTTP {status} (not retried): {response.text[:300]}")
                    )
            if attempt < self.max_retries:
                delay = self._delay(attempt, retry_after)
                log.warning("llm judge: %s; retry %d/%d in %.1fs", self._redact(last), attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        raise JudgeError(self._redact(f"llm judge: {url} still failing after {self.max_retries} retries: {last}"))

    # -- comparisons --------------------------------------------------------------------------

    def key(self, prompt: str, first: str, second: str) -> str:
        fields = [self.model, self.template, prompt, first, second, self.temperature, self.max_tokens]
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()

    def _answer(self, prompt: str, first: str, second: str) -> tuple[str, bool]:
        """The judge's raw answer for this presentation and whether it came from the cache."""
        key = self.key(prompt, first, second)
        if self.cache is not None:
            record = self.cache.get(key)
            if record is not None and isinstance(record.get("content"), str):
                return record["content"], True
        content = self.ask(templates.render(self.template, prompt=prompt, first=first, second=second))
        if self.cache is not None:
            self.cache.put(key, {"model": self.model, "template": self.prompt_name, "content": content, "time": time.time()})
        return content, False

    def compare(self, prompts: Sequence[str], samples: Sequence[str], references: Sequence[str]) -> list[float]:
        return self.evaluate(prompts, samples, references).outcomes

    def evaluate(self, prompts: Sequence[str], samples: Sequence[str], references: Sequence[str]) -> JudgeResult:
        with self._lock:
            self._counts = {"requests": 0, "retries": 0}
        # every presentation to ask: (comparison index, sample shown first?, prompt, first, second)
        asks: list[tuple[int, bool, str, str, str]] = []
        for i, (prompt, sample, reference) in enumerate(zip(prompts, samples, references, strict=True)):
            prompt, sample, reference = prompt.strip(), sample.strip(), reference.strip()
            orders = (True, False) if self.order == "both" else (presentation_order(self.seed, prompt, sample, reference),)
            for sample_first in orders:
                first, second = (sample, reference) if sample_first else (reference, sample)
                asks.append((i, sample_first, prompt, first, second))
        unique = {self.key(p, a, b): (p, a, b) for _, _, p, a, b in asks}
        answers: dict[str, tuple[str, bool]] = {}
        if unique:
            pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(unique)), thread_name_prefix="llm-judge")
            try:
                futures = {key: pool.submit(self._answer, *args) for key, args in unique.items()}
                for key, future in futures.items():
                    answers[key] = future.result()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        verdicts: list[list[float]] = [[] for _ in prompts]
        first_preferred = decided = 0
        for i, sample_first, prompt, first, second in asks:
            letter = parse_verdict(answers[self.key(prompt, first, second)][0])
            if letter is None:
                continue
            if letter == "tie":
                verdicts[i].append(TIE)
                continue
            decided += 1
            first_preferred += letter == "A"
            sample_won = (letter == "A") == sample_first
            verdicts[i].append(SAMPLE_WINS if sample_won else REFERENCE_WINS)
        outcomes = [sum(v) / len(v) if v else NO_VERDICT for v in verdicts]
        metrics = {
            "judge_requests": self._counts["requests"],
            "judge_retries": self._counts["retries"],
            "judge_cache_hits": sum(1 for _, hit in answers.values() if hit),
            "judge_first_preferred": first_preferred / decided if decided else math.nan,
        }
        return JudgeResult(outcomes, metrics)


def api_key_from_env(env_var: Optional[str]) -> Optional[str]:
    """The API key from the environment variable `env_var` (None: the server needs no key)."""
    from alignsweep.errors import ConfigError

    if not env_var:
        return None
    value = os.environ.get(env_var)
    if not value:
        raise ConfigError(
            f"judge.api_key_env: the llm judge reads its API key from the environment variable {env_var}, "
            f"which is not set for this job; export {env_var}=... where the job runs (keys are never put in "
            "configs), or set judge.api_key_env=null for a server without authentication"
        )
    return value
