"""Scripted model behaviour for annotate/critique tests through the loopback OpenAI-compatible server.

The "annotator" answers the gold label except on WRONG items (known machine errors); the "critic"
answers in each strategy's format, judging against the gold label, so a correctly wired pipeline
gets an error-detection AUROC of 1 on the conftest tweets.
"""

from __future__ import annotations

import math
import re
from typing import Any

from actlabel.testing.openai_server import Reply

from .conftest import LABELS, TWEETS

GOLD = dict(TWEETS)
#: tweet -> the wrong label the scripted annotator gives it
WRONG = {
    TWEETS[1][0]: "positive",
    TWEETS[4][0]: "neutral",
    TWEETS[8][0]: "negative",
}


def content_text(message: dict[str, Any]) -> str:
    c = message.get("content")
    if isinstance(c, str):
        return c
    return "\n".join(p.get("text", "") for p in c or [] if p.get("type") == "text")


def last_user(body: dict[str, Any]) -> str:
    users = [m for m in body["messages"] if m["role"] == "user"]
    return content_text(users[-1])


def tweet_of(body: dict[str, Any]) -> str:
    found = re.findall(r"^text: (.*)$", last_user(body), re.M)
    return found[-1].strip()


def machine_label_of(body: dict[str, Any]) -> str:
    return re.search(r'(?:Machine label: |Is ")(\w+)', last_user(body)).group(1)


def prefix_of(body: dict[str, Any]) -> str | None:
    """The assistant prefill (assistant_prefix), when the request has one."""
    last = body["messages"][-1]
    return content_text(last) if last["role"] == "assistant" else None


def annotator_label(tweet: str) -> str:
    return WRONG.get(tweet, GOLD[tweet])


def token_reply(text: str, probs: dict[str, float]) -> Reply:
    """A one-token reply whose top alternatives carry `probs` (endpoint-style logprobs)."""
    top = {tok: math.log(p) for tok, p in probs.items()}
    return Reply(text, logprobs=[(text, top[text], top)])


def label_probs(best: str, p: float = 0.7) -> dict[str, float]:
    rest = (1 - p) / (len(LABELS) - 1)
    return {lab: (p if lab == best else rest) for lab in LABELS}


def annotate_responder(body: dict[str, Any]) -> str | Reply:
    tweet = tweet_of(body)
    label = annotator_label(tweet)
    if "Think step by step" in last_user(body):
        return f"The tweet reads as {label} to me.\nAnswer: {label}"
    if body.get("logprobs"):
        return token_reply(label, label_probs(label, 0.8 if tweet not in WRONG else 0.5))
    return label


def critic_responder(body: dict[str, Any]) -> str | Reply:
    """Answers every critic prompt of actlabel in its expected format."""
    user = last_user(body)
    tweet = tweet_of(body)
    gold = GOLD[tweet]
    if "Which label is correct" in user:  # the proposal question of yes/no critics
        return token_reply(gold, label_probs(gold))
    machine = machine_label_of(body)
    wrong = machine != gold
    prefix = prefix_of(body)
    # the white-box critics ask 'is "LABEL" the correct label?': "no" when it is wrong
    if prefix is not None:  # cot-logit verdict after the analysis
        return token_reply(
            "no" if wrong else "yes", {"yes": 0.15, "no": 0.85} if wrong else {"yes": 0.8, "no": 0.2}
        )
    if "Answer with one word: yes or no" in user:  # logit
        return token_reply(
            "no" if wrong else "yes", {"yes": 0.25, "no": 0.75} if wrong else {"yes": 0.9, "no": 0.1}
        )
    if "Analyse step by step" in user:  # cot-logit / cot-ppl analysis; wrong labels make the critic hesitate
        words = f"The tweet says {tweet.lower()} which reads as {gold}.".split(" ")
        lp = -2.5 if wrong else -0.2
        tokens = [(w if i == 0 else " " + w, lp, {}) for i, w in enumerate(words)]
        tokens.append((f"\nCorrect label: {gold}", lp, {}))
        return Reply("".join(t for t, _, _ in tokens), logprobs=tokens)
    if "Verdict:" in user:  # multiple choice
        return f"Verdict: {'E' if wrong else 'A'}\nCorrect label: {gold}\nReason: it reads as {gold}."
    p = 0.9 if wrong else 0.1
    if "devil's advocate" in user:
        return f"One could argue the label is off.\nCorrect label: {gold}\nProbability wrong: {p}\nReason: it reads as {gold}."
    think = "Step by step: the tweet is clear. " if "step by step" in user else ""
    return f"{think}Correct label: {gold}\nProbability wrong: {p}\nReason: the tweet reads as {gold}."
