"""Heads: the small trainable models that read the cache.

Every head answers one interface (``samcache.heads.base.Head``): it declares which batch inputs
it needs and maps a batch to a dict holding at least ``logits`` (per image, or per pixel for
the dense heads of segmentation tasks). A head is added by writing a
builder and registering it by name; the parametrised test over ``HEADS`` then covers it.
"""

from samcache.heads import (  # noqa: F401  (each module registers its heads)
    aernet,
    attnmel,
    classifier,
    probe,
    sam_attnmel,
    samaug,
    sanet,
    sanet_baselines,
    slca,
    thwin,
)
from samcache.heads.base import HEADS, INPUTS, Head, build_head, head_class, register_head

__all__ = ["HEADS", "INPUTS", "Head", "build_head", "head_class", "register_head"]
