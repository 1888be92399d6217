"""MinHash signatures and an LSH index over them, for near-duplicate search (stages/near_dup.py and the
near-duplicate check of stages/decontaminate.py).

Texts become word shingles (`shingles`: lower-cased words, `size` at a time); a signature is `num_perm` 32-bit
MinHash values, kept as a numpy row (512 bytes at 128 permutations), never the text. Two libraries compute them:
- `rensa` (default): R-MinHash in Rust; measured 19x faster signatures and 7x faster LSH inserts+queries than
  datasketch on this box (bench/dedup.py, bench/results/dedup.json has both);
- `datasketch`: the classic MinHash and MinHashLSH (same interface here, other hash values).

`MinHashIndex` keeps one signature per indexed row and the library's LSH index over them. `best_match` asks the
LSH index for candidates and keeps the one whose estimated Jaccard similarity (the fraction of equal signature
values) is highest and at least the threshold, so an LSH false positive never counts as a match.
"""
from __future__ import annotations

import re
from typing import Literal, Optional

import numpy as np

Backend = Literal["rensa", "datasketch"]
SEED = 1
_WORD = re.compile(r"\w+")


def words(text: Optional[str]) -> list[str]:
    """The words of a text as compared: lower-cased runs of letters and digits (punctuation and spacing ignored)."""
    return _WORD.findall((text or "").lower())


def shingles(text: Optional[str], size: int) -> list[str]:
    """Word `size`-grams of the text (a text shorter than `size` words: itself, one shingle); [] when it has no
    words."""
    w = words(text)
    if not w:
        return []
    if len(w) <= size:
        return [" ".join(w)]
    return [" ".join(w[i:i + size]) for i in range(len(w) - size + 1)]


MIN_RECALL_AT_THRESHOLD = 0.9


def lsh_bands(threshold: float, num_perm: int) -> int:
    """The number of LSH bands b (a divisor of num_perm, r = num_perm / b rows each): the fewest bands, so the
    fewest false candidates, whose S-curve 1 - (1 - s^r)^b still makes a pair of similarity `threshold` a
    candidate with probability at least MIN_RECALL_AT_THRESHOLD (more similar pairs: more likely). Every
    candidate is verified on its signature, so a false candidate only costs one comparison; a missed one is
    lost."""
    for b in (d for d in range(1, num_perm + 1) if num_perm % d == 0):
        r = num_perm // b
        if 1 - (1 - threshold ** r) ** b >= MIN_RECALL_AT_THRESHOLD:
            return b
    return num_perm


class MinHasher:
    """Signatures of texts with one library and settings; `sketch` gives the library's object (for its LSH index)
    and the signature as uint32."""

    def __init__(self, backend: Backend = "rensa", num_perm: int = 128, shingle_size: int = 5):
        self.backend, self.num_perm, self.shingle_size = backend, num_perm, shingle_size
        if backend == "rensa":
            from rensa import RMinHash
            self._cls = RMinHash
        elif backend == "datasketch":
            from datasketch import MinHash
            self._cls = MinHash
        else:
            raise ValueError(f"unknown MinHash backend {backend!r} (rensa or datasketch)")

    def sketch(self, text: Optional[str], group: Optional[str] = None):
        """(library MinHash object, uint32 signature), or None for a text without words. With `group`, every
        shingle carries it, so texts of different groups share no shingle and are never similar, while two texts
        of one group compare as without it."""
        sh = shingles(text, self.shingle_size)
        if not sh:
            return None
        if group is not None:
            sh = [f"{group}\x1f{s}" for s in sh]
        if self.backend == "rensa":
            m = self._cls(num_perm=self.num_perm, seed=SEED)
            m.update(sh)
            return m, np.asarray(m.digest(), dtype=np.uint32)
        m = self._cls(num_perm=self.num_perm, seed=SEED)
        m.update_batch([s.encode("utf-8") for s in sh])
        return m, m.hashvalues.astype(np.uint32)


class MinHashIndex:
    """Signatures of indexed rows (int keys 0, 1, ...) and the library's LSH index over them."""

    def __init__(self, hasher: MinHasher, threshold: float):
        self.hasher, self.threshold = hasher, threshold
        self.bands = lsh_bands(threshold, hasher.num_perm)
        if hasher.backend == "rensa":
            from rensa import RMinHashLSH
            self._lsh = RMinHashLSH(threshold=threshold, num_perm=hasher.num_perm, num_bands=self.bands)
        else:
            from datasketch import MinHashLSH
            self._lsh = MinHashLSH(num_perm=hasher.num_perm, params=(self.bands, hasher.num_perm // self.bands))
        self._sigs = np.zeros((1024, hasher.num_perm), dtype=np.uint32)
        self.size = 0

    def add(self, sketch) -> int:
        """Index a sketch (from `hasher.sketch`); returns its key."""
        m, sig = sketch
        key = self.size
        if key == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.zeros_like(self._sigs)])
        self._sigs[key] = sig
        self._lsh.insert(key, m)
        self.size += 1
        return key

    def best_match(self, sketch) -> Optional[tuple[int, float]]:
        """(key, estimated Jaccard) of the most similar indexed row at or above the threshold, else None."""
        m, sig = sketch
        cands = list(self._lsh.query(m))
        if not cands:
            return None
        keys = np.asarray(sorted(cands), dtype=np.int64)
        sims = (self._sigs[keys] == sig).mean(axis=1)
        i = int(np.argmax(sims))
        return (int(keys[i]), float(sims[i])) if sims[i] >= self.threshold else None

    @property
    def signature_bytes(self) -> int:
        return int(self.size * self.hasher.num_perm * 4)
