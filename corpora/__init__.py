"""Where the text comes from: the built-in domain corpora (legal licence texts, HPO clinical
definitions), a user's own corpus, and the benchmark sets (CUAD, PubMedQA, WikiText-2) read from an
assets folder.
data.py's domain table says which loader and which benchmarks belong to a domain."""


class DataError(Exception):
    """A problem with a corpus, data folder or split size, reported to the user as one line."""
