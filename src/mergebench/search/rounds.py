"""Tasks written against one model, run for many variants at once: their calls gathered round by round.

Shared decoding (:mod:`mergebench.search.shared_decoding`) serves many variants' calls together,
while tasks stay unaware of it: each variant's task runs in its own thread against a proxy
model; the proxies' calls are gathered round by round (a round ends when every unfinished task
waits on a call) and served together by the calling thread, which alone touches torch.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

from mergebench.evaluation.api import ForwardingModel, GenerationRequest, LanguageModel, Loglikelihood, LoglikelihoodRequest


class _Proxy(ForwardingModel):
    """What one variant's task sees: the resident model, with its two calls sent to the rounds."""

    def __init__(self, lm: LanguageModel, rounds: "Rounds", k: int) -> None:
        super().__init__(lm)
        self._rounds, self._k = rounds, k

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        return self._rounds.call(self._k, "generate", list(requests))

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        return self._rounds.call(self._k, "loglikelihood", list(requests))


class Rounds:
    """Runs one job per thread; each round serves every waiting call together."""

    def __init__(self, lm: LanguageModel, runs: Sequence[Callable[[LanguageModel], Any]]) -> None:
        self.lm, self.runs, self.n = lm, runs, len(runs)
        self.cond = threading.Condition()
        self.pending: dict[int, tuple[str, list]] = {}
        self.answers: dict[int, Any] = {}
        self.live = self.n

    def call(self, k: int, kind: str, requests: list) -> Any:
        with self.cond:
            self.pending[k] = (kind, requests)
            self.cond.notify_all()
            while k not in self.answers:
                self.cond.wait()
            answer = self.answers.pop(k)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def run(self, serve: Callable[[dict[int, tuple[str, list]]], dict[int, Any]]) -> list[Any]:
        results: list[Any] = [None] * self.n
        errors: dict[int, BaseException] = {}

        def work(k: int) -> None:
            try:
                results[k] = self.runs[k](_Proxy(self.lm, self, k))
            except BaseException as error:  # noqa: B036 - handed to the calling thread, which re-raises
                errors[k] = error
            finally:
                with self.cond:
                    self.live -= 1
                    self.cond.notify_all()

        threads = [threading.Thread(target=work, args=(k,), daemon=True, name=f"variant-{k}") for k in range(self.n)]
        for thread in threads:
            thread.start()
        while True:
            with self.cond:
                while self.live and len(self.pending) < self.live:
                    self.cond.wait()
                if not self.live:
                    break
                calls, self.pending = self.pending, {}
            try:
                answers: dict[int, Any] = serve(calls)
            except BaseException as error:  # noqa: B036 - every waiting task gets it and ends
                answers = {k: error for k in calls}
            with self.cond:
                self.answers.update(answers)
                self.cond.notify_all()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[min(errors)]
        return results
