"""FastChat's single-answer grading prompts for MT-Bench, as constants.

The four ``type: single`` prompts of FastChat's ``fastchat/llm_judge/data/judge_prompts.jsonl``
(lm-sys/FastChat, file last changed in commit 7ad1d63, July 2023), copied word for word,
including their typos ("You evaluation"), because the judge's scores depend on the wording.
FastChat is Copyright 2023 the LMSYS authors, licensed under the Apache License 2.0
(http://www.apache.org/licenses/LICENSE-2.0).

How FastChat uses them (``gen_judgment.py``, ``common.py``): turn 1 is graded with ``single-v1``,
or ``single-math-v1`` with the reference answer for the categories of
:data:`NEED_REF_CATS`; turn 2 with the ``-multi-turn`` variant, which shows the judge the whole
conversation and asks it to grade the second answer. The system prompt goes in the ``system``
message, the filled template in the ``user`` message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")
"""Categories graded against a reference answer (FastChat's ``NEED_REF_CATS``)."""


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    system: str
    template: str
    multi_turn: bool
    needs_reference: bool


_RATE = ('After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following '
         'this format: "[[rating]]", for example: "Rating: [[5]]".')

SINGLE_V1 = JudgePrompt(
    name="single-v1",
    system="You are a helpful assistant.",
    template=(
        "[Instruction]\n"
        "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the "
        "user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, "
        "accuracy, depth, creativity, and level of detail of the response. Begin your evaluation by providing a short "
        "explanation. Be as objective as possible. " + _RATE + "\n\n"
        "[Question]\n{question}\n\n"
        "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
    ),
    multi_turn=False, needs_reference=False,
)

SINGLE_MATH_V1 = JudgePrompt(
    name="single-math-v1",
    system="You are a helpful assistant.",
    template=(
        "[Instruction]\n"
        "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the "
        "user question displayed below. Your evaluation should consider correctness and helpfulness. You will be given "
        "a reference answer and the assistant's answer. Begin your evaluation by comparing the assistant's answer with "
        "the reference answer. Identify and correct any mistakes. Be as objective as possible. " + _RATE + "\n\n"
        "[Question]\n{question}\n\n"
        "[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]\n\n"
        "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
    ),
    multi_turn=False, needs_reference=True,
)

_CONVERSATION = (
    "<|The Start of Assistant A's Conversation with User|>\n\n"
    "### User:\n{question_1}\n\n### Assistant A:\n{answer_1}\n\n"
    "### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
    "<|The End of Assistant A's Conversation with User|>"
)

SINGLE_V1_MULTI_TURN = JudgePrompt(
    name="single-v1-multi-turn",
    system=(
        "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the "
        "user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, "
        "accuracy, depth, creativity, and level of detail of the response. You evaluation should focus on the "
        "assistant's answer to the second user question. Begin your evaluation by providing a short explanation. "
        "Be as objective as possible. " + _RATE + "\n\n"
    ),
    template=_CONVERSATION,
    multi_turn=True, needs_reference=False,
)

SINGLE_MATH_V1_MULTI_TURN = JudgePrompt(
    name="single-math-v1-multi-turn",
    system=(
        "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the "
        "user question. Your evaluation should consider correctness and helpfulness. You will be given a reference "
        "answer and the assistant's answer. You evaluation should focus on the assistant's answer to the second "
        "question. Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and "
        "correct any mistakes. Be as objective as possible. " + _RATE + "\n\n"
    ),
    template=(
        "<|The Start of Reference Answer|>\n\n"
        "### User:\n{question_1}\n\n### Reference answer:\n{ref_answer_1}\n\n"
        "### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n"
        "<|The End of Reference Answer|>\n\n\n" + _CONVERSATION
    ),
    multi_turn=True, needs_reference=True,
)

PROMPTS = (SINGLE_V1, SINGLE_MATH_V1, SINGLE_V1_MULTI_TURN, SINGLE_MATH_V1_MULTI_TURN)


def prompts_digest() -> str:
    """SHA-256 of ``{name: [system, template]}`` as sorted JSON: the prompts' identity in cache keys and tests."""
    table = {p.name: (p.system, p.template) for p in PROMPTS}
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()


FASTCHAT_DIGEST = "867ed14f4605ca54d77069735c0eeeaedd77e0101b859b23c7e3a84f4968c33f"
""":func:`prompts_digest` of the four prompts as read from FastChat's ``judge_prompts.jsonl`` (commit 7ad1d63)."""

PROMPT_VERSION = f"fastchat-single-v1@{FASTCHAT_DIGEST[:12]}"
"""Part of the task's cache key: new prompt texts must change it (a test checks the digest)."""


def choose(multi_turn: bool, with_reference: bool) -> JudgePrompt:
    if multi_turn:
        return SINGLE_MATH_V1_MULTI_TURN if with_reference else SINGLE_V1_MULTI_TURN
    return SINGLE_MATH_V1 if with_reference else SINGLE_V1


def judge_messages(prompt: JudgePrompt, turns: tuple[str, str], answers: tuple[str, str],
                   reference: tuple[str, str] | None) -> list[dict[str, str]]:
    """The chat messages FastChat sends the judge for one turn (``run_judge_single``)."""
    refs = {"ref_answer_1": reference[0], "ref_answer_2": reference[1]} if prompt.needs_reference and reference else {}
    if prompt.multi_turn:
        user = prompt.template.format(question_1=turns[0], question_2=turns[1], answer_1=answers[0],
                                      answer_2=answers[1], **refs)
    else:
        user = prompt.template.format(question=turns[0], answer=answers[0], **refs)
    return [{"role": "system", "content": prompt.system}, {"role": "user", "content": user}]
