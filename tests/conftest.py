"""Shared fixtures: small real projects in temporary folders."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from actlabel.project import Project

LABELS = ["positive", "negative", "neutral"]

TWEETS = [
    ("I love this phone, best purchase ever", "positive"),
    ("Worst customer service I have ever had", "negative"),
    ("The store opens at 9am tomorrow", "neutral"),
    ("So happy with how the day turned out!", "positive"),
    ("This update broke everything, furious", "negative"),
    ("Meeting moved to room 4", "neutral"),
    ("What a fantastic concert last night", "positive"),
    ("My flight got cancelled again. Terrible.", "negative"),
    ("The report is due on Friday", "neutral"),
    ("Great food and friendly staff", "positive"),
    ("I hate waiting in this queue", "negative"),
    ("It is raining in Paris", "neutral"),
]


def write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def tweets_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "tweets.csv", [{"text": t, "gold": g} for t, g in TWEETS])


@pytest.fixture
def project(tmp_path: Path, tweets_csv: Path) -> Project:
    """A project with the 12 tweets imported (gold labels included)."""
    proj = Project.init(tmp_path / "proj", LABELS, instructions="Classify the sentiment of the tweet.")
    proj.import_file(tweets_csv, text_columns=["text"], gold_column="gold")
    yield proj
    proj.close()
