"""Cached views: SAM's taps of transformed training images, so augmentation can be exact.

SAM's features of a flipped image are not the flipped features of the image. A feature set with
``views: [identity, hflip, ...]`` stores, for every image of the training split, the taps of each
view (the image flipped or turned *before* SAM's own preprocessing, exactly what
``SamPredictor.set_image`` of the transformed image gives); validation and test images keep the
identity view only. A run with ``train.tap_augment: views`` then draws, per sample, one of the
flips and quarter turns its ``augment`` settings allow, transforms the image and masks exactly
and reads the taps of that view from the cache ("the tap of item i under view v",
``tap_under_views``). A transform the cache does not hold is an error, never a fallback.

Views are the eight symmetries of the square, named by what they do to an (H, W) array:
``identity``, ``hflip`` (mirror left-right), ``vflip`` (top-bottom), ``rot90``, ``rot180``,
``rot270`` (counter-clockwise quarter turns, as ``numpy.rot90`` and ``torch.rot90``),
``transpose`` and ``antitranspose``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

IDENTITY = "identity"


def apply_view(x: np.ndarray, view: str, axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
    """``x`` transformed by ``view`` over the (row, column) ``axes``; exact (a permutation)."""
    fx, fy, k = VIEW_OPS[view]
    if fx:
        x = np.flip(x, axis=axes[1])
    if fy:
        x = np.flip(x, axis=axes[0])
    return np.rot90(x, k, axes=axes) if k else x


def _canonical() -> tuple[dict[str, tuple[bool, bool, int]], dict[tuple[bool, bool, int], str]]:
    """Every (flip x, flip y, quarter turns) draw, and the view each one amounts to."""
    pattern = np.arange(4).reshape(2, 2)
    named = {
        IDENTITY: pattern,
        "hflip": pattern[:, ::-1],
        "vflip": pattern[::-1, :],
        "rot90": np.rot90(pattern, 1),
        "rot180": np.rot90(pattern, 2),
        "rot270": np.rot90(pattern, 3),
        "transpose": pattern.T,
        "antitranspose": np.rot90(pattern, 2).T,
    }
    ops, by_draw = {}, {}
    for fx in (False, True):
        for fy in (False, True):
            for k in range(4):
                y = pattern[:, ::-1] if fx else pattern
                y = y[::-1, :] if fy else y
                y = np.rot90(y, k)
                name = next(n for n, p in named.items() if np.array_equal(p, y))
                ops.setdefault(name, (fx, fy, k))
                by_draw[(fx, fy, k)] = name
    return ops, by_draw


VIEW_OPS, _BY_DRAW = _canonical()
VIEWS = tuple(VIEW_OPS)


def view_of(fx: bool, fy: bool, k: int) -> str:
    """The view a horizontal flip ``fx``, vertical flip ``fy`` and ``k`` quarter turns make."""
    return _BY_DRAW[(bool(fx), bool(fy), int(k) % 4)]


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    views = tuple(views)
    unknown = sorted(set(views) - set(VIEWS))
    if unknown:
        raise ValueError(f"unknown views {unknown}; choose among {list(VIEWS)}")
    if not views or views[0] != IDENTITY or len(set(views)) != len(views):
        raise ValueError(f"views must start with '{IDENTITY}' and not repeat: {list(views)}")
    return views


def tap_under_views(
    arrays: Mapping[str, Any], index: np.ndarray, views: Sequence[str]
) -> np.ndarray:
    """Rows ``index`` of a tap, row i taken from the array of view ``views[i]``.

    ``arrays`` maps a view name to that view's array of the tap (resident numpy rows or a Zarr
    array indexed by item, as long as ``index`` matches it).
    """
    from samcache.features.store import read_items

    index, views = np.asarray(index), np.asarray(views)
    missing = sorted(set(views.tolist()) - set(arrays))
    if missing:
        raise ValueError(
            f"the feature cache holds no taps of views {missing} (it holds {sorted(arrays)}); "
            "add them to the feature set's views or draw no such transform"
        )
    out = None
    for view in dict.fromkeys(views.tolist()):
        sel = np.flatnonzero(views == view)
        arr = arrays[view]
        rows = arr[index[sel]] if isinstance(arr, np.ndarray) else read_items(arr, index[sel])
        if out is None:
            out = np.empty((len(index), *rows.shape[1:]), dtype=rows.dtype)
        out[sel] = rows
    return out


class ViewTaps:
    """The cached views of a run's tapped maps for its training items: ``(items, views) -> taps``.

    Resident (read once) unless ``lazy``, like the run's other inputs.
    """

    def __init__(
        self, store: Any, taps: Sequence[str], train_items: np.ndarray, *, lazy: bool = False
    ) -> None:
        import torch

        from samcache.features.store import read_items

        self.views = tuple(store.views)
        self.lazy = lazy
        self.train_items = np.asarray(train_items)
        self.row = {int(i): r for r, i in enumerate(self.train_items)}
        self.arrays = {
            t: {
                v: store.array(t, v) if lazy else read_items(store.array(t, v), self.train_items)
                for v in self.views
            }
            for t in taps
        }
        self._torch = torch

    def __call__(self, items: Any, views: Sequence[str]) -> dict[str, Any]:
        items = np.asarray(items)
        index = items if self.lazy else np.array([self.row[int(i)] for i in items])
        return {
            t: self._torch.from_numpy(tap_under_views(arrays, index, views)).float()
            for t, arrays in self.arrays.items()
        }


def augment_by_views(
    batch: dict[str, Any],
    spec: Any,
    generator: Any,
    view_taps: Callable[[Any, list[str]], dict[str, Any]],
) -> dict[str, Any]:
    """Flips and quarter turns drawn as ``augment`` draws them, applied exactly to the image and
    masks; the taps are those cached for each sample's view."""
    import torch

    from samcache.augment import flip_turn

    if spec.crop_size is not None or tuple(spec.crop_scale) != (1.0, 1.0):
        raise ValueError(
            "tap_augment: views holds flips and quarter turns only; a crop would need SAM to "
            "encode every cropped image. Set train.augment.crop_scale to [1.0, 1.0] (and no "
            "crop_size), or use tap_augment: warp"
        )
    n = len(batch["label"])
    u = torch.rand(n, 5, generator=generator)  # the same draws as augment's other modes
    fx = (u[:, 3] < 0.5) & spec.hflip
    fy = (u[:, 4] < 0.5) & spec.vflip
    k = (
        torch.randint(0, 4, (n,), generator=generator)
        if spec.rot90
        else torch.zeros(n, dtype=torch.long)
    )
    names = [view_of(a, b, c) for a, b, c in zip(fx.tolist(), fy.tolist(), k.tolist(), strict=True)]
    rest = {key: v for key, v in batch.items() if key != "taps"}
    out = flip_turn(rest, fx, fy, k)
    out["taps"] = view_taps(batch["item"], names)
    return out


TAP_AUGMENTS = ("warp", "views", "none")


def augmentation_for_run(
    augment: Any,
    tap_augment: str,
    requires: frozenset[str],
    store: Any,
    taps: Sequence[str] = (),
    train_items: np.ndarray | None = None,
    *,
    lazy: bool = False,
    source: Callable[[], Callable[[Any, Sequence[str]], dict[str, Any]]] | None = None,
) -> tuple[Any, Callable[[Any, Sequence[str]], dict[str, Any]] | None]:
    """A run's augmentation (``AugmentSpec`` or None) and, for ``tap_augment: views``, the
    cached views its taps are read from: ``source()`` (a run's resident inputs,
    ``RunInputs.view_taps``), else a ``ViewTaps`` of ``taps`` for ``train_items``. Runs that
    read no taps ignore ``tap_augment``."""
    from samcache.augment import AugmentSpec

    if tap_augment not in TAP_AUGMENTS:
        raise ValueError(f"train.tap_augment must be one of {TAP_AUGMENTS}, not '{tap_augment}'")
    spec = AugmentSpec.from_config(augment)
    if spec is None or "taps" not in requires or tap_augment == "warp":
        return spec, None
    if tap_augment == "none":
        return None, None
    missing = [v for v in _drawable(spec) if v not in store.views]
    if missing:
        raise ValueError(
            f"tap_augment: views, but the feature cache {store.path} holds no taps of views "
            f"{missing} that train.augment can draw (it holds {list(store.views)}); add them to "
            "the feature set's views or turn those flips or turns off"
        )
    if source is not None:
        return spec, source()
    return spec, ViewTaps(store, taps, train_items, lazy=lazy)


def _drawable(spec: Any) -> list[str]:
    """Every view the flips and quarter turns of ``spec`` can produce."""
    return list(
        dict.fromkeys(
            view_of(fx, fy, k)
            for fx in ((False, True) if spec.hflip else (False,))
            for fy in ((False, True) if spec.vflip else (False,))
            for k in (range(4) if spec.rot90 else (0,))
        )
    )
