"""The judge's command-line options (``--mb-judge-*``), kept here so the pytest plugin only calls two functions.

Each option falls back to its environment variable (see :class:`~mergebench.evaluation.judge.JudgeSettings`);
the API key has no option: ``--mb-judge-key-env`` names the variable that holds it.
"""

from __future__ import annotations

from mergebench.evaluation.judge import KEY_ENV_ENV, MODEL_ENV, URL_ENV, JudgeSettings


def add_options(group) -> None:
    """Add the judge's options to a pytest option group."""
    group.addoption("--mb-judge-url", default=None, metavar="URL",
                    help=f"OpenAI-compatible API root of the judge model for judged tasks (mt_bench), e.g. "
                         f"http://localhost:8000/v1 (default: ${URL_ENV})")
    group.addoption("--mb-judge-model", default=None, metavar="NAME",
                    help=f"the judge's model name as the server knows it; part of the evaluation's cache key "
                         f"(default: ${MODEL_ENV})")
    group.addoption("--mb-judge-key-env", default=None, metavar="VAR",
                    help=f"environment variable holding the judge's API key (default: ${KEY_ENV_ENV}, else OPENAI_API_KEY)")


def settings(config) -> JudgeSettings:
    """The judge settings of a pytest run: its options, else the environment."""
    return JudgeSettings.from_env(url=config.getoption("mb_judge_url"), model=config.getoption("mb_judge_model"),
                                  key_env=config.getoption("mb_judge_key_env"))
