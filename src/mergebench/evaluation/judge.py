"""A judge model behind an OpenAI-compatible chat endpoint: its settings, a client, and the rating parser.

Tasks that grade free text with a model (MT-Bench-style single-answer grading) ask a server
that speaks the chat-completions protocol — a vLLM server running an open judge model, or a
hosted API — through :class:`JudgeClient`, which needs only the standard library:

``POST {url}/chat/completions`` with ``{"model", "messages", "temperature": 0, "n": 1, "max_tokens"}``
and reads ``choices[0].message.content``.

**Settings** (:class:`JudgeSettings`) are the base URL (``http://localhost:8000/v1``), the judge's
model name, and the *name* of the environment variable that holds the API key
(``OPENAI_API_KEY`` unless told otherwise). The key itself is read from that variable at each
request and lives nowhere else: not in the settings (so not in their repr), not in results,
cache keys or log lines; error messages built from a server's reply have it masked.

**Failures.** :meth:`JudgeClient.probe` asks ``GET {url}/models`` (or, where that route does not
exist, a 1-token completion) with a short timeout, so an unreachable judge, a refused key or a
model the server does not serve is an error before any generation starts. During grading, HTTP
429 and 5xx answers and dropped connections are retried a bounded number of times, waiting as
long as the server's ``Retry-After`` asks (capped) or else doubling from one second.

**Ratings** are read as FastChat's ``llm_judge/common.py`` reads them: the first ``[[x]]`` in the
judgment, else the first ``[x]``, with ``x`` a number (``\\d+\\.?\\d*``); no range check, as there.
"""

from __future__ import annotations

import ast
import json
import os
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from mergebench.errors import JudgeError, UsageError

URL_ENV = "MERGEBENCH_JUDGE_URL"
MODEL_ENV = "MERGEBENCH_JUDGE_MODEL"
KEY_ENV_ENV = "MERGEBENCH_JUDGE_API_KEY_ENV"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# FastChat, fastchat/llm_judge/common.py (Apache-2.0): one_score_pattern and its backup.
ONE_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(judgment: str | None) -> float | None:
    """The rating in a judgment (``[[7]]``, else ``[7]``), or None when there is none."""
    if not judgment:
        return None
    match = ONE_SCORE_PATTERN.search(judgment) or ONE_SCORE_PATTERN_BACKUP.search(judgment)
    return float(ast.literal_eval(match.group(1))) if match else None


@dataclass(frozen=True)
class JudgeSettings:
    """Where the judge is and which model it is; the API key stays in the environment variable ``key_env``."""

    url: str | None = None
    model: str | None = None
    key_env: str = DEFAULT_KEY_ENV

    @classmethod
    def from_env(cls, url: str | None = None, model: str | None = None, key_env: str | None = None,
                 environ: Mapping[str, str] | None = None) -> "JudgeSettings":
        """Settings from the arguments given, the rest from ``MERGEBENCH_JUDGE_URL``, ``MERGEBENCH_JUDGE_MODEL``
        and ``MERGEBENCH_JUDGE_API_KEY_ENV`` (default ``OPENAI_API_KEY``)."""
        environ = os.environ if environ is None else environ
        return cls(url=(url or environ.get(URL_ENV) or None),
                   model=(model or environ.get(MODEL_ENV) or None),
                   key_env=key_env or environ.get(KEY_ENV_ENV) or DEFAULT_KEY_ENV)

    def api_key(self) -> str | None:
        return os.environ.get(self.key_env) or None

    @property
    def display_url(self) -> str:
        """The URL as shown in messages: without user:password or query string."""
        parts = urllib.parse.urlsplit(self.url or "")
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))

    def require(self, task: str) -> None:
        missing = [what for what, value in (("URL", self.url), ("model name", self.model)) if not value]
        if missing:
            raise UsageError(
                f"task {task!r} grades answers with a judge model and needs its {' and '.join(missing)}: pass "
                f"--mb-judge-url URL --mb-judge-model NAME (or set {URL_ENV} and {MODEL_ENV}), e.g. a vLLM server "
                "started with `vllm serve MODEL` at http://localhost:8000/v1, or https://api.openai.com/v1; "
                f"the API key is read from ${self.key_env} (another variable: --mb-judge-key-env / {KEY_ENV_ENV})"
            )


class JudgeClient:
    """Chat completions at temperature 0 from the judge of ``settings``, with bounded retries."""

    def __init__(self, settings: JudgeSettings, *, timeout: float = 300.0, probe_timeout: float = 10.0,
                 max_attempts: int = 6, max_wait: float = 120.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.timeout, self.probe_timeout = timeout, probe_timeout
        self.max_attempts, self.max_wait = max_attempts, max_wait
        self.sleep = sleep
        self.base = (settings.url or "").rstrip("/")

    # -- the two calls -----------------------------------------------------------------
    def probe(self) -> None:
        """Check that the judge answers, accepts the key and serves the model; raise :class:`JudgeError` if not."""
        try:
            listing = self._call("GET", "/models", None, self.probe_timeout, retry_unreachable=False)
        except _NoRoute:
            listing = None
        served = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)] \
            if isinstance(listing, dict) and isinstance(listing.get("data"), list) else None
        if served is None:  # no model listing here: one 1-token completion checks the rest
            self.complete([{"role": "user", "content": "Say OK."}], max_tokens=1, timeout=self.probe_timeout,
                          retry_unreachable=False)
        elif self.settings.model not in served:
            shown = ", ".join(repr(s) for s in served[:10]) + (", ..." if len(served) > 10 else "")
            raise JudgeError(f"the judge at {self.settings.display_url} does not serve model {self.settings.model!r} "
                             f"(it serves {shown or 'none'}); fix --mb-judge-model / {MODEL_ENV}")

    def complete(self, messages: Sequence[Mapping[str, str]], *, max_tokens: int = 2048, timeout: float | None = None,
                 retry_unreachable: bool = True) -> str:
        """The judge's reply to ``messages`` (greedy: temperature 0, one choice)."""
        body = {"model": self.settings.model, "messages": list(messages), "temperature": 0, "n": 1,
                "max_tokens": max_tokens}
        reply = self._call("POST", "/chat/completions", body, timeout or self.timeout, retry_unreachable=retry_unreachable)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"the judge at {self.settings.display_url} answered without choices[0].message.content: "
                             f"{self._mask(json.dumps(reply))[:300]}") from None
        return content or ""

    # -- HTTP with retries ---------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict | None, timeout: float, *, retry_unreachable: bool) -> Any:
        import http.client  # here, not at import: the pytest plugin imports this module at start-up
        import urllib.error
        import urllib.request

        url = self.base + path
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        key = self.settings.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        waited, last = 0.0, ""
        for attempt in range(1, self.max_attempts + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    text = response.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError as exc:
                detail = self._detail(exc)
                if exc.code in RETRY_STATUSES and attempt < self.max_attempts:
                    wait = self._wait(exc.headers.get("Retry-After"), attempt)
                    last = f"HTTP {exc.code}"
                    self.sleep(wait)
                    waited += wait
                    continue
                raise self._http_error(exc.code, detail, method, path, attempt, waited) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                if not retry_unreachable:
                    raise JudgeError(
                        f"cannot reach the judge at {self.settings.display_url} ({self._mask(str(reason))}, "
                        f"timeout {timeout:g} s); start the server (e.g. `vllm serve MODEL --port 8000`) or fix "
                        f"--mb-judge-url / {URL_ENV}") from None
                if attempt < self.max_attempts:
                    wait = self._wait(None, attempt)
                    last = self._mask(str(reason))
                    self.sleep(wait)
                    waited += wait
                    continue
                raise JudgeError(f"the judge at {self.settings.display_url} stopped answering ({last}) after "
                                 f"{attempt} attempts over {waited:.0f} s") from None
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise JudgeError(f"the judge at {self.settings.display_url} answered {method} {path} with text that is "
                                 f"not JSON: {self._mask(text)[:200]!r}") from None
        raise AssertionError("unreachable")

    def _wait(self, retry_after: str | None, attempt: int) -> float:
        """Seconds before the next attempt: the server's ``Retry-After`` (seconds or HTTP date), else 1, 2, 4 ... s."""
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), self.max_wait)
            except ValueError:
                import email.utils

                try:
                    when = email.utils.parsedate_to_datetime(retry_after).timestamp()
                    return min(max(when - time.time(), 0.0), self.max_wait)
                except (TypeError, ValueError):
                    pass
        return min(2.0 ** (attempt - 1), self.max_wait)

    def _http_error(self, status: int, detail: str, method: str, path: str, attempts: int, waited: float) -> Exception:
        where = self.settings.display_url
        said = f": {detail}" if detail else ""
        if status in (404, 405):
            if path == "/models":
                return _NoRoute()
            return JudgeError(f"the judge at {where} answered HTTP {status} to {method} {path}{said}; the URL should be "
                              "the API root just before /chat/completions (e.g. http://localhost:8000/v1) and the model "
                              f"a name the server serves (--mb-judge-model / {MODEL_ENV})")
        if status in (401, 403):
            state = "is set" if self.settings.api_key() else "is not set"
            return JudgeError(f"the judge at {where} refused the request (HTTP {status}{said}); its API key is read "
                              f"from the environment variable {self.settings.key_env}, which {state} "
                              f"(another variable: --mb-judge-key-env / {KEY_ENV_ENV})")
        if status in RETRY_STATUSES:
            kind = "rate-limited the requests" if status == 429 else "kept failing"
            return JudgeError(f"the judge at {where} {kind} (HTTP {status}{said}) after {attempts} attempts over "
                              f"{waited:.0f} s; lower the task option judge_parallel or try again later")
        return JudgeError(f"the judge at {where} rejected {method} {path} (HTTP {status}{said})")

    def _detail(self, exc: urllib.error.HTTPError) -> str:
        try:
            text = exc.read().decode("utf-8", errors="replace")
        except Exception:
            text = ""
        try:  # OpenAI's {"error": {"message": ...}}, FastAPI's {"detail": ...}, or the text as it came
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = text
        if isinstance(parsed, dict):
            inner = parsed.get("error", parsed)
            if isinstance(inner, dict):
                inner = inner.get("message") or inner.get("detail") or inner
            text = inner if isinstance(inner, str) else json.dumps(inner)
        return self._mask(" ".join(text.split()))[:300]

    def _mask(self, text: str) -> str:
        key = self.settings.api_key()
        return text.replace(key, "***") if key else text


class _NoRoute(Exception):
    """The server lists no models (HTTP 404/405 on ``/models``): the probe falls back to a 1-token completion."""
