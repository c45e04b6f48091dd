"""Caption tokenisation for CIDEr: pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1, `-lowerCase`, then its
punctuation tokens dropped), either through Java or by our pure-Python re-implementation of the rules captions hit.

Why a Python path: the Java tokenizer needs a JRE, which CI machines may lack. The Python rules reproduce the
Stanford lexer on caption text (lowercasing, brackets -> -lrb-/-rrb-/..., quotes, clitics `n't 's 're 've 'll 'd 'm`,
gonna/wanna/gotta/cannot, numbers with , . : /, hyphenated words, abbreviations, punctuation runs, URLs);
tests/evaluate/test_cider.py checks them token for token against the jar when Java is present.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

# pycocoevalcap's list: tokens dropped after tokenisation (note the uppercase bracket names: with -lowerCase the
# lexer emits "-lrb-", which this list does not match, so lowercase brackets stay, as in pycocoevalcap).
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...",
                ";"}

# Abbreviations the Stanford lexer keeps with their final period (a subset: the ones plausible in captions).
ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "inc", "ltd", "co", "corp", "mt", "ft", "gen",
    "gov", "sen", "rep", "capt", "col", "sgt", "lt", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "ave", "blvd", "rd", "dept", "est",
}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}
_SPLIT_WORDS = {"gonna": ("gon", "na"), "wanna": ("wan", "na"), "gotta": ("got", "ta"), "cannot": ("can", "not"),
                "'tis": ("'t", "is"), "'twas": ("'t", "was")}
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_UNICODE = {"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2013": " -- ", "\u2014": " -- ",
            "\u2026": "...", "\u00a0": " "}

_TOKEN = re.compile(r"""
    (?P<url>https?://\S+|www\.\S+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+)
  | (?P<smiley>[:;]-?[()])
  | (?P<alnum>\d\w*[^\W\d_]\w*(?:-\w+)*|\d+(?:-[^\W\d_]\w*)+(?:-\w+)*)
  | (?P<num>[+-]?(?:\d+(?:[.,:/-]\d+)*|\.\d+))
  | (?P<tis>'t(?=(?:is|was)\b))
  | (?P<hashtag>\#\w+)
  | (?P<initials>(?:[^\W\d_]\.){2,})
  | (?P<word>[^\W_](?:[\w&]|[-'/](?=[^\W_])|'(?=\w))*)
  | (?P<ellipsis>\.\.\.+|\.(?:\s*\.)+)
  | (?P<dashes>--+)
  | (?P<qq>``|'')
  | (?P<punct>[?!]+|[.,;:%$#@&*=+<>|\\/^~_'"`-]|[(){}\[\]])
  | (?P<other>\S)
""", re.VERBOSE)


def _word_tokens(low: str) -> list[str]:
    """Split clitics off a lowercased word: "isn't" -> is n't, "cat's" -> cat 's, "gonna" -> gon na."""
    if low in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[low])
    m = _CLITIC.match(low)
    if m:
        return [m.group(1), m.group(2)]
    return [low]


def tokenize_line(text: str) -> list[str]:
    """One caption -> PTB tokens (lowercased), before punctuation removal."""
    for k, v in _UNICODE.items():
        text = text.replace(k, v)
    out: list[str] = []
    matches = list(_TOKEN.finditer(text))
    i = 0
    while i < len(matches):
        m = matches[i]
        kind, tok = m.lastgroup, m.group()
        prev_char = text[m.start() - 1] if m.start() > 0 else " "
        nxt = matches[i + 1] if i + 1 < len(matches) else None
        i += 1
        if kind == "smiley":
            out.append(tok[:-1] + _BRACKETS[tok[-1]])
        elif kind in ("url", "initials", "other", "tis", "hashtag", "alnum"):
            out.append(tok.lower())
        elif kind == "num":
            out.append(tok)
        elif kind == "word":
            low = tok.lower()
            # an abbreviation keeps its period ("mr." / "etc."): the lexer sees the word followed directly by "."
            if low in ABBREVIATIONS and nxt is not None and nxt.group() == "." and nxt.start() == m.end():
                out.append(low + ".")
                i += 1
                continue
            out.extend(_word_tokens(low))
        elif kind == "ellipsis":
            out.extend(["..."] if tok.startswith("...") else ["."] * tok.count("."))
        elif kind == "dashes":
            out.append("--")
        elif kind == "qq":
            out.append(tok)
        elif tok in _BRACKETS:
            out.append(_BRACKETS[tok])
        elif tok in ('"', "'"):
            opening = prev_char.isspace() or prev_char in "([{"
            out.append(("``" if tok == '"' else "`") if opening else ("''" if tok == '"' else "'"))
        else:
            out.append(tok)
    return out


def tokenize_python(captions: dict) -> dict:
    """{key: [{"caption": str}, ...]} -> {key: [tokenised caption, ...]}, as PTBTokenizer.tokenize returns."""
    return {k: [" ".join(t for t in tokenize_line(c["caption"].replace("\n", " ")) if t not in PUNCTUATIONS)
                for c in v] for k, v in captions.items()}


def java_available() -> bool:
    return shutil.which("java") is not None


def tokenize_java(captions: dict) -> dict:
    """pycocoevalcap's own PTBTokenizer (needs `java`). Writes its temp file in a temp dir, not site-packages."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = os.path.join(os.path.dirname(ptbtokenizer.__file__), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    keys = [k for k, v in captions.items() for _ in v]
    lines = "\n".join(c["caption"].replace("\n", " ") for v in captions.values() for c in v)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
        fh.write(lines)
    try:
        res = subprocess.run(["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                              "-lowerCase", fh.name], capture_output=True, check=True)
    finally:
        os.unlink(fh.name)
    out: dict = {}
    for k, line in zip(keys, res.stdout.decode("utf-8").split("\n")):
        out.setdefault(k, []).append(" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS))
    return out


def tokenize(captions: dict, backend: str = "auto") -> tuple[dict, str]:
    """Tokenise with `backend` ("java", "python", or "auto": java when installed). Returns (result, backend used)."""
    if backend == "auto":
        backend = "java" if java_available() else "python"
    if backend == "java":
        if not java_available():
            raise RuntimeError("cider tokenizer 'java' requested but no `java` on PATH (install a JRE, e.g. "
                               "apt-get install default-jre-headless, or use the 'python' tokenizer)")
        return tokenize_java(captions), "java"
    if backend == "python":
        return tokenize_python(captions), "python"
    raise ValueError(f"unknown tokenizer backend {backend!r} (java, python, auto)")
