"""The OpenAI-compatible judge client against a real loopback server: requests, retries, probe, errors, rating parser."""

from __future__ import annotations

import pytest

from mergebench.errors import JudgeError, UsageError
from mergebench.evaluation.judge import JudgeClient, JudgeSettings, parse_rating
from tests.fake_judge import FakeJudge, closed_port_url

KEY = "sk-test-1234567890-secret"


class Sleeps(list):
    """Records the waits instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client(url: str, monkeypatch, key: str | None = KEY, **kwargs) -> JudgeClient:
    if key is None:
        monkeypatch.delenv("MB_TEST_JUDGE_KEY", raising=False)
    else:
        monkeypatch.setenv("MB_TEST_JUDGE_KEY", key)
    kwargs.setdefault("sleep", Sleeps())
    return JudgeClient(JudgeSettings(url=url, model="judge", key_env="MB_TEST_JUDGE_KEY"), **kwargs)


# -- rating parser: FastChat's two patterns -------------------------------------------------
@pytest.mark.parametrize("judgment, rating", [
    ("The answer is fine. Rating: [[7]]", 7.0),
    ("Rating: [[8.5]]", 8.5),
    ("Rating: [6]", 6.0),  # the backup pattern
    ("[3] is cited, but the verdict is [[9]]", 9.0),  # [[x]] anywhere wins over an earlier [x]
    ("[[7]] first, [[3]] later", 7.0),  # the first match
    ("Rating: [[10]]", 10.0),
    ("I would give it a seven.", None),
    ("Rating: [[seven]]", None),
    ("", None),
    (None, None),
])
def test_ratings_are_read_as_fastchat_reads_them(judgment, rating):
    assert parse_rating(judgment) == rating


# -- settings ------------------------------------------------------------------------------
def test_settings_come_from_the_environment_and_never_hold_the_key(monkeypatch):
    env = {"MERGEBENCH_JUDGE_URL": "http://judge:8000/v1", "MERGEBENCH_JUDGE_MODEL": "qwen",
           "MERGEBENCH_JUDGE_API_KEY_ENV": "MY_KEY"}
    settings = JudgeSettings.from_env(environ=env)
    assert settings == JudgeSettings("http://judge:8000/v1", "qwen", "MY_KEY")
    assert JudgeSettings.from_env(model="other", environ=env).model == "other"  # an option beats the variable
    assert JudgeSettings.from_env(environ={}).key_env == "OPENAI_API_KEY"
    monkeypatch.setenv("MY_KEY", KEY)
    assert settings.api_key() == KEY and KEY not in repr(settings)
    assert JudgeSettings("https://user:pw@host:8443/v1?token=x").display_url == "https://host:8443/v1"


def test_a_missing_url_or_model_is_a_usage_error_that_names_the_options():
    with pytest.raises(UsageError) as raised:
        JudgeSettings(url=None, model="judge").require("mt_bench")
    message = str(raised.value)
    assert "task 'mt_bench' grades answers with a judge model and needs its URL" in message
    assert "--mb-judge-url" in message and "MERGEBENCH_JUDGE_URL" in message and "$OPENAI_API_KEY" in message


# -- requests ------------------------------------------------------------------------------
def test_a_completion_is_greedy_with_fastchats_settings_and_sends_the_key(monkeypatch):
    with FakeJudge(lambda body: "Rating: [[4]]", key=KEY) as judge:
        reply = client(judge.url, monkeypatch).complete([{"role": "user", "content": "grade"}])
    assert reply == "Rating: [[4]]"
    (request,) = judge.requests
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["body"] == {"model": "judge", "messages": [{"role": "user", "content": "grade"}],
                               "temperature": 0, "n": 1, "max_tokens": 2048}


def test_rate_limits_wait_as_long_as_retry_after_says_then_succeed(monkeypatch):
    errors = [(429, {"Retry-After": "3"}, {"error": {"message": "slow down"}}),
              (503, {}, {"error": {"message": "loading"}})]  # no Retry-After: backoff 1, 2, 4 ... s by attempt
    with FakeJudge(errors=errors) as judge:
        judge_client = client(judge.url, monkeypatch)
        assert judge_client.complete([{"role": "user", "content": "x"}]) == "Rating: [[5]]"
    assert judge_client.sleep == [3.0, 2.0]
    assert [r["status"] for r in judge.requests] == [429, 503, 200]


def test_retries_are_bounded_and_the_error_says_what_happened(monkeypatch):
    errors = [(429, {"Retry-After": "1000"}, {"error": {"message": "quota"}})] * 10
    with FakeJudge(errors=errors) as judge:
        judge_client = client(judge.url, monkeypatch, max_attempts=4, max_wait=30.0)
        with pytest.raises(JudgeError) as raised:
            judge_client.complete([{"role": "user", "content": "x"}])
    assert judge_client.sleep == [30.0, 30.0, 30.0]  # Retry-After capped at max_wait
    assert len(judge.requests) == 4
    assert str(raised.value) == (f"the judge at {judge.url} rate-limited the requests (HTTP 429: quota) after 4 attempts "
                                 "over 90 s; lower the task option judge_parallel or try again later")


def test_an_http_date_retry_after_is_honoured(monkeypatch):
    import email.utils
    import time

    judge_client = client("http://127.0.0.1:9/v1", monkeypatch)
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 18.0 <= judge_client._wait(when, 1) <= 20.0
    assert judge_client._wait(None, 3) == 4.0


# -- the probe -----------------------------------------------------------------------------
def test_an_unreachable_judge_fails_the_probe_at_once_with_what_to_do(monkeypatch):
    url = closed_port_url()
    judge_client = client(url, monkeypatch)
    with pytest.raises(JudgeError) as raised:
        judge_client.probe()
    message = str(raised.value)
    assert message.startswith(f"cannot reach the judge at {url} (")
    assert "start the server (e.g. `vllm serve MODEL --port 8000`) or fix --mb-judge-url / MERGEBENCH_JUDGE_URL" in message
    assert judge_client.sleep == []  # the probe does not retry an unreachable server


def test_the_probe_checks_the_served_models(monkeypatch):
    with FakeJudge(models=("Qwen/Qwen2.5-7B-Instruct",)) as judge:
        with pytest.raises(JudgeError) as raised:
            client(judge.url, monkeypatch).probe()
    assert str(raised.value) == (f"the judge at {judge.url} does not serve model 'judge' (it serves "
                                 "'Qwen/Qwen2.5-7B-Instruct'); fix --mb-judge-model / MERGEBENCH_JUDGE_MODEL")


def test_without_a_model_list_the_probe_asks_for_one_token(monkeypatch):
    with FakeJudge(models=None) as judge:
        client(judge.url, monkeypatch).probe()
    assert [r["path"] for r in judge.requests] == ["/v1/models", "/v1/chat/completions"]
    assert judge.requests[1]["body"]["max_tokens"] == 1


def test_a_refused_key_names_the_variable_but_never_shows_the_key(monkeypatch):
    with FakeJudge(key="sk-the-right-one") as judge:
        with pytest.raises(JudgeError) as raised:
            client(judge.url, monkeypatch).probe()
    message = str(raised.value)
    assert message == (f"the judge at {judge.url} refused the request (HTTP 401: Incorrect API key provided.); its API "
                       "key is read from the environment variable MB_TEST_JUDGE_KEY, which is set (another variable: "
                       "--mb-judge-key-env / MERGEBENCH_JUDGE_API_KEY_ENV)")
    assert KEY not in message


def test_a_server_that_echoes_the_key_has_it_masked_in_the_error(monkeypatch):
    echo = [(400, {}, {"error": {"message": f"bad request with header Bearer {KEY}"}})]
    with FakeJudge(errors=echo) as judge:
        with pytest.raises(JudgeError) as raised:
            client(judge.url, monkeypatch).complete([{"role": "user", "content": "x"}])
    assert str(raised.value) == (f"the judge at {judge.url} rejected POST /chat/completions "
                                 "(HTTP 400: bad request with header Bearer ***)")


def test_a_wrong_path_says_where_the_url_should_end(monkeypatch):
    with FakeJudge() as judge:
        with pytest.raises(JudgeError) as raised:
            client(judge.url.removesuffix("/v1"), monkeypatch).complete([{"role": "user", "content": "x"}])
    assert "answered HTTP 404 to POST /chat/completions: Not Found; the URL should be the API root just before " \
           "/chat/completions (e.g. http://localhost:8000/v1)" in str(raised.value)
