"""Per-record seeds.

A record's own ``seed`` wins. Otherwise its seed is derived from a run seed and the record's
position, so a run is reproducible from one number while n copies of one prompt still differ.
Without a run seed, one is drawn from the OS, except for the shards of a sweep, which take one
from the input's content so every node derives the same seeds. The effective seed is always
echoed in the output.
"""

from __future__ import annotations

import hashlib
import secrets

#: Derived and drawn seeds stay below 2**53 so every JSON consumer (jq included) keeps them exact.
DERIVED_SEED_BITS = 53


def draw_run_seed() -> int:
    return secrets.randbits(DERIVED_SEED_BITS)


def derive_seed(run_seed: int, position: int) -> int:
    """The seed of the record at ``position`` (0-based among the input's records)."""
    digest = hashlib.blake2b(f"{run_seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - DERIVED_SEED_BITS)


def seed_from_digest(sha256: str) -> int:
    """A run seed that every node computes alike from the input's sha256 (hex)."""
    return int(sha256[:16], 16) >> (64 - DERIVED_SEED_BITS)


def sample_seed(seed: int, sample: int) -> int:
    """The seed of sample ``sample`` of a record whose seed is ``seed`` (``generation.n``):
    the first sample keeps it, so ``n: 1`` is the plain record."""
    return seed if sample == 0 else derive_seed(seed, sample)
