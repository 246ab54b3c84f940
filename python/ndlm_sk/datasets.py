"""Loading the PBC white blood cell images (and the embedded sample), and stratified splits.

The PBC dataset (Acevedo et al., "A dataset of microscopic peripheral blood cell images for
development of automatic recognition systems", Data in Brief 30 (2020) 105474, CC BY 4.0) is a
folder of class subfolders holding JPEG files. :func:`load_pbc` turns such a folder into the arrays
an estimator takes: ``X`` of shape ``(n, height, width, 3)`` (uint8, RGB) and ``y`` (class names).

The real release has defects that a loader must handle, and this one does:

- a stray macOS metadata file named ``.DS_169665.jpg`` that is not an image: files that Pillow
  cannot decode are skipped, and ONE warning lists them;
- byte-identical duplicate files, within a class and across two classes: with
  ``deduplicate=True`` (the default) one copy is kept, and a file whose copies carry different
  labels is dropped entirely (its label is unknown). ONE warning says what was dropped; a random
  split that ignored duplicates would leak test images into training;
- images of different sizes (360x363, a second batch at 366x369): all are resized.

Decoding ~10,000 JPEGs takes a while, so the result is cached on disk (see :func:`load_pbc`).

This module never imports the compiled ``ndlm_sk._core``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import sys
import time
import warnings
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from ._fileio import atomic_write

__all__ = [
    "IMAGE_EXTENSIONS",
    "PBCDataWarning",
    "WBC_CLASSES",
    "clear_cache",
    "default_cache_dir",
    "find_duplicates",
    "load_pbc",
    "load_pbc_sample",
    "pbc_sample_path",
    "split_indices",
    "train_val_test_split",
]

#: The five white-cell classes of the PBC release that the NDLM paper uses (its folder names); the
#: release's other three folders (``erythroblast``, ``ig``: immature granulocytes, ``platelet``)
#: are not white cells of a 5-part differential.
WBC_CLASSES = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")

#: File name endings (case-insensitive) that :func:`load_pbc` reads; other files are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")

# Bump whenever the cached content could change for the same inputs (decoding, resizing,
# dedup rules, file layout of the cache entry).
_CACHE_FORMAT_VERSION = 1
_RESAMPLING = "PIL BILINEAR, reducing_gap=None"
_CHUNK = 64  # images per task sent to a worker process
_MIN_PARALLEL = 512  # fewer images than this are decoded in-process (pool start-up costs ~1 s)
_MAX_LISTED = 5  # file names shown in a warning
_SKIPPED_DIRS = ("__MACOSX",)


class PBCDataWarning(UserWarning):
    """Issued by :func:`load_pbc` for skipped, unreadable or duplicate files, and cache problems."""


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load_pbc(
    path,
    image_size=300,
    *,
    classes=None,
    deduplicate=True,
    cache=True,
    cache_dir=None,
    n_jobs=None,
    verbose=False,
    return_paths=False,
):
    """Load a PBC-style image folder as ``(X, y)`` arrays.

    Parameters
    ----------
    path : str or path-like
        Folder laid out like the PBC release: one subfolder per class (``<class>/<image>.jpg``).
        The class of an image is the name of its subfolder. Files ending in ``.jpg``, ``.jpeg``,
        ``.png``, ``.tif`` or ``.tiff`` (any case) are read, including hidden ones (so that a
        stray non-image file is reported, not silently ignored); other files and hidden
        subfolders are ignored.
    image_size : int or (int, int), default=300
        Output size: ``s`` for ``s x s`` images, or ``(height, width)``. Every image is converted
        to RGB and resized with Pillow's BILINEAR filter and ``reducing_gap=None``: the exact,
        antialiased (the filter support widens with the scale factor) bilinear resampling over
        the full decoded image, with no JPEG draft-mode shortcut. The paper resizes 360x363
        images to 300x300, which changes the aspect ratio slightly; so does this.
    classes : sequence of str, optional
        Class subfolders to load (default: all). Duplicate detection only looks at these.
    deduplicate : bool, default=True
        Drop byte-identical files (hash of the file bytes). Within a class the first copy in
        name order is kept; if identical files carry different labels, every copy is dropped.
        One :class:`PBCDataWarning` reports what was dropped; :func:`find_duplicates` lists the
        groups and ``return_paths=True`` shows which files were kept.
    cache : bool, default=True
        Cache the decoded, resized arrays on disk, and load them from there when the same folder
        content is loaded again with the same settings. The cache key is a hash of the class
        list, every file's relative path and content hash (BLAKE2b of the bytes, so a changed,
        added or removed file invalidates the entry, while a copied or re-downloaded folder with
        new modification times still hits it), ``image_size``, ``deduplicate`` and the cache
        format version. An entry is a ``.npy`` file (``X``) and a JSON file (labels, paths,
        dropped files, CRC32 of ``X``), each written to a temporary file and moved into place
        with :func:`os.replace`, so an interrupted run never leaves a half-written entry; an
        entry that fails validation is rebuilt (with a warning). An entry for the full PBC
        folder at 300x300 takes ~2.5 GB; see :func:`clear_cache`.
    cache_dir : str or path-like, optional
        Where cache entries live. Default: ``$NDLM_SK_CACHE`` if set, else ``~/.cache/ndlm_sk``.
    n_jobs : int, optional
        Worker processes for decoding (a cache miss only). ``None`` uses every available core,
        negative values count back from it (``-1``: all). Fewer than 512 images are decoded in
        the calling process.
    verbose : bool, default=False
        Print progress (listing, hashing, cache hit/miss, decoding) to stderr.
    return_paths : bool, default=False
        Also return the relative paths (``"<class>/<file name>"``, ``/``-separated) of the
        images that were kept, aligned with ``X`` and ``y``.

    Returns
    -------
    X : ndarray of shape (n_images, height, width, 3), dtype uint8, C-contiguous
    y : ndarray of shape (n_images,), dtype str
        Class names. Rows are sorted by class, then by file name.
    paths : list of str
        Only if ``return_paths`` is true.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If there are no class subfolders, no image files, or no image could be decoded; or if a
        requested class has no subfolder.

    Warns
    -----
    PBCDataWarning
        Once for files that are not readable images (count and first names), once for dropped
        duplicates, once for class folders without image files; also when a cache entry was
        corrupt or could not be written. The same warnings are issued when the arrays come from
        the cache.
    """
    size_hw = _check_image_size(image_size)
    root = _resolve_root(path)
    class_names = _select_classes(root, classes)
    labels, rels = _list_files(root, class_names)
    t0 = time.perf_counter()
    hashes, read_errors = _hash_files(root, rels)
    _log(
        verbose,
        f"found {len(rels)} image files in {len(class_names)} class folders of "
        f"{root}; hashed in {time.perf_counter() - t0:.1f} s",
    )

    key = _cache_key(class_names, rels, hashes, size_hw, deduplicate)
    X = meta = None
    cdir = None
    if cache:
        cdir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        t0 = time.perf_counter()
        hit = _read_cache(cdir, key, verbose)
        if hit is not None:
            X, meta = hit
            _log(
                verbose,
                f"cache hit: {_entry_stem(cdir, key)}.npy ({X.nbytes / 1e6:.0f} MB, {time.perf_counter() - t0:.1f} s)",
            )
        else:
            _log(verbose, f"cache miss in {cdir}")
    if X is None:
        X, meta = _build(root, labels, rels, hashes, read_errors, size_hw, deduplicate, n_jobs, verbose)
        if cache:
            _write_cache(cdir, key, X, meta, verbose)

    _emit_warnings(meta, root)
    y = np.asarray(meta["labels"], dtype=str)
    if return_paths:
        return X, y, list(meta["paths"])
    return X, y


def find_duplicates(path, *, classes=None):
    """Groups of byte-identical image files in a PBC-style folder.

    Looks at the same files as :func:`load_pbc` (class subfolders, image file endings).

    Returns
    -------
    groups : list of list of str
        Each group lists the relative paths (``"<class>/<file name>"``) of two or more files with
        identical bytes, in name order; groups are ordered by their first path. The class of a
        file is the first path component: a group spanning several classes has an unknown label,
        and :func:`load_pbc` drops all of it; otherwise it keeps the group's first file.
    """
    root = _resolve_root(path)
    labels, rels = _list_files(root, _select_classes(root, classes), warn_empty=False)
    hashes, _ = _hash_files(root, rels)
    groups = defaultdict(list)
    for rel, h in zip(rels, hashes):
        if h is not None:
            groups[h].append(rel)
    return [g for g in groups.values() if len(g) > 1]


def pbc_sample_path():
    """Path of the embedded sample folder (200 PBC images: 5 classes x 40, see its README.md)."""
    return Path(__file__).resolve().parent / "data" / "pbc_sample"


def load_pbc_sample(image_size=300, *, return_paths=False, cache=False, cache_dir=None, verbose=False):
    """Load the embedded sample of the PBC dataset: 200 images, 40 per class.

    The files are an unmodified random sample (``random.Random(0)``; 2 per class from the second
    acquisition batch) of the PBC dataset by Acevedo et al., Data in Brief 30 (2020) 105474,
    licensed CC BY 4.0; see ``data/pbc_sample/README.md``. They contain no duplicates and no
    unreadable file. Enough for examples and smoke tests, far too few to reproduce the paper.

    Parameters are those of :func:`load_pbc`; the cache is off by default (decoding 200 images
    takes well under a second).

    Returns
    -------
    X : ndarray of shape (200, height, width, 3), dtype uint8
    y : ndarray of shape (200,), dtype str
    paths : list of str, only if ``return_paths``
    """
    return load_pbc(
        pbc_sample_path(), image_size, cache=cache, cache_dir=cache_dir, verbose=verbose, return_paths=return_paths
    )


def default_cache_dir():
    """``$NDLM_SK_CACHE`` if set, else ``~/.cache/ndlm_sk``."""
    env = os.environ.get("NDLM_SK_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ndlm_sk"


def clear_cache(cache_dir=None):
    """Delete the cache entries of :func:`load_pbc` (and leftover temporary files).

    Only files that :func:`load_pbc` writes (``pbc-*.npy``, ``pbc-*.json``, ``pbc-*.tmp``) are
    removed. Returns the number of files removed.
    """
    cdir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if not cdir.is_dir():
        return 0
    removed = 0
    for pattern in ("pbc-*.npy", "pbc-*.json", "pbc-*.tmp"):
        for p in cdir.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed += 1
    return removed


def split_indices(y, sizes=(0.5, 0.25, 0.25), random_state=0):
    """Stratified train/validation/test split of ``range(len(y))``.

    Two calls of :func:`sklearn.model_selection.train_test_split` with ``stratify``: first
    train vs. the rest, then the rest into validation and test. Use the indices to slice large
    image arrays once (``X[idx_train]``).

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Labels to stratify on.
    sizes : (float, float, float), default=(0.5, 0.25, 0.25)
        Fractions for train, validation and test (the paper's 50/25/25). They must be
        non-negative and sum to 1; the train fraction must be positive. A zero validation or
        test fraction gives an empty index array.
    random_state : int, RandomState instance or None, default=0

    Returns
    -------
    idx_train, idx_val, idx_test : ndarray of int
        Disjoint, covering every sample; in the (shuffled) order of ``train_test_split``.
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}")
    s_tr, s_va, s_te = _check_sizes(sizes)
    idx = np.arange(len(y))
    empty = np.empty(0, dtype=idx.dtype)
    if s_tr >= 1.0:
        return idx.copy(), empty, empty.copy()
    idx_tr, idx_rest = train_test_split(idx, train_size=s_tr, stratify=y, random_state=random_state)
    if s_va == 0.0:
        return idx_tr, empty, idx_rest
    if s_te == 0.0:
        return idx_tr, idx_rest, empty
    idx_va, idx_te = train_test_split(
        idx_rest, test_size=s_te / (s_va + s_te), stratify=y[idx_rest], random_state=random_state
    )
    return idx_tr, idx_va, idx_te


def train_val_test_split(X, y, sizes=(0.5, 0.25, 0.25), random_state=0):
    """Stratified train/validation/test split of ``(X, y)``; see :func:`split_indices`.

    ``X`` is indexed once per part (each part is a copy, as with any fancy indexing); to avoid
    even that, use :func:`split_indices` and slice lazily.

    Returns
    -------
    X_train, X_val, X_test, y_train, y_val, y_test
    """
    y = np.asarray(y)
    X = np.asarray(X)
    if len(X) != len(y):
        raise ValueError(f"X and y have different lengths: {len(X)} and {len(y)}")
    idx_tr, idx_va, idx_te = split_indices(y, sizes, random_state)
    return X[idx_tr], X[idx_va], X[idx_te], y[idx_tr], y[idx_va], y[idx_te]


# --------------------------------------------------------------------------------------------
# Listing and hashing
# --------------------------------------------------------------------------------------------


def _log(verbose, msg):
    if verbose:
        print(f"[ndlm_sk.load_pbc] {msg}", file=sys.stderr, flush=True)


def _check_image_size(image_size):
    try:
        if isinstance(image_size, (tuple, list, np.ndarray)):
            if len(image_size) != 2:
                raise ValueError
            h, w = (operator.index(v) for v in image_size)
        else:
            if isinstance(image_size, bool):
                raise ValueError
            h = w = operator.index(image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be a positive int or a (height, width) pair, got {image_size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return int(h), int(w)


def _resolve_root(path):
    root = Path(os.fspath(path)).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"PBC image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root} (expected <class>/<image>.jpg inside)")
    return root.resolve()


def _select_classes(root, classes):
    available = sorted(
        e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".") and e.name not in _SKIPPED_DIRS
    )
    if classes is None:
        selected = available
    else:
        if isinstance(classes, (str, bytes)):
            classes = [classes]
        classes = list(classes)
        bad = [c for c in classes if not isinstance(c, str)]
        if bad:
            raise TypeError(f"classes must be folder names (str), got {bad!r}")
        selected = sorted(set(classes))
        missing = [c for c in selected if c not in available]
        if missing:
            raise ValueError(f"class folder(s) {missing} not found in {root}; available: {available}")
    if not selected:
        raise ValueError(
            f"no class subfolders in {root}: expected one folder per class holding the images (<class>/<image>.jpg)"
        )
    return selected


def _list_files(root, class_names, warn_empty=True):
    labels, rels, empty = [], [], []
    for c in class_names:
        names = sorted(
            e.name for e in os.scandir(root / c) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not names:
            empty.append(c)
        labels.extend([c] * len(names))
        rels.extend(f"{c}/{n}" for n in names)
    if not rels:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders {class_names} of {root}")
    if empty and warn_empty:
        warnings.warn(
            f"load_pbc: ignored {len(empty)} class folder(s) of {root} without image files: {', '.join(empty)}",
            PBCDataWarning,
            stacklevel=3,
        )
    return labels, rels


def _hash_files(root, rels):
    """BLAKE2b-128 of each file's bytes; ``None`` (and a reason) for a file that cannot be read."""
    hashes, errors = [], []
    for rel in rels:
        try:
            data = (root / rel).read_bytes()
        except OSError as exc:
            hashes.append(None)
            errors.append((rel, type(exc).__name__))
            continue
        hashes.append(hashlib.blake2b(data, digest_size=16).hexdigest())
    return hashes, errors


def _plan_duplicates(labels, rels, hashes):
    """Indices to drop, (dropped, kept) pairs within a class, and cross-label groups."""
    groups = defaultdict(list)
    for i, h in enumerate(hashes):
        if h is not None:
            groups[h].append(i)
    dropped, within, conflicts = set(), [], []
    for idxs in groups.values():
        if len(idxs) < 2:
            continue
        if len({labels[i] for i in idxs}) > 1:
            dropped.update(idxs)
            conflicts.append([rels[i] for i in idxs])
        else:
            for i in idxs[1:]:
                dropped.add(i)
                within.append([rels[i], rels[idxs[0]]])
    return dropped, within, conflicts


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def read_image(file, image_size=300, channels=3):
    """Decode one image file and resize it exactly as :func:`load_pbc` does.

    Returns a uint8 array of shape ``(height, width, channels)``: RGB for ``channels=3`` (what
    :func:`load_pbc` reads), grayscale for ``channels=1``; ``image_size`` is ``s`` or
    ``(height, width)``. Raises the decoder's error (``OSError`` / ``PIL.UnidentifiedImageError``)
    for a file that is not a readable image.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return _decode_image(file, _check_image_size(image_size), channels)


def _decode_image(file, size_hw, channels=3):
    """Decode one image file to a uint8 array of shape ``(h, w, channels)`` (3: RGB, 1: gray)."""
    from PIL import Image

    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    with Image.open(file) as im:
        im = im.convert("RGB" if channels == 3 else "L")  # forces the full decode: truncated data raises here
    h, w = size_hw
    if im.size != (w, h):
        im = im.resize((w, h), bilinear, reducing_gap=None)
    a = np.asarray(im, dtype=np.uint8)
    return a if channels == 3 else a[..., np.newaxis]


def _decode_into(out, root, rels, size_hw):
    """Decode ``rels`` into ``out[k]``; returns ``[(k, reason), ...]`` for failures."""
    errors = []
    for k, rel in enumerate(rels):
        try:
            out[k] = _decode_image(os.path.join(root, rel), size_hw)
        except Exception as exc:  # noqa: BLE001 - any undecodable file is skipped and reported
            out[k] = 0
            errors.append((k, type(exc).__name__))
    return errors


def _decode_chunk(root, rels, size_hw):
    """Worker-process task: decode a chunk of files."""
    out = np.empty((len(rels), size_hw[0], size_hw[1], 3), dtype=np.uint8)
    return out, _decode_into(out, root, rels, size_hw)


def _effective_n_jobs(n_jobs):
    if hasattr(os, "sched_getaffinity"):
        n_cpu = len(os.sched_getaffinity(0)) or 1
    else:
        n_cpu = os.cpu_count() or 1
    if n_jobs is None:
        return n_cpu
    n_jobs = operator.index(n_jobs)
    if n_jobs == 0:
        raise ValueError("n_jobs must be a positive or negative int, or None; got 0")
    return n_jobs if n_jobs > 0 else max(1, n_cpu + 1 + n_jobs)


def _decode_all(root, rels, size_hw, n_jobs, verbose):
    """Decode ``rels`` into one array; returns ``(X, failed)`` with ``failed = [(i, reason)]``.

    Rows of failed files are removed from ``X`` (in place, without a second full-size copy).
    """
    n = len(rels)
    h, w = size_hw
    X = np.empty((n, h, w, 3), dtype=np.uint8)
    failed = []
    starts = range(0, n, _CHUNK)
    n_workers = min(_effective_n_jobs(n_jobs), len(starts))
    t0 = time.perf_counter()
    root = str(root)

    def progress(done):
        _log(verbose, f"decoded {done}/{n} images ({time.perf_counter() - t0:.1f} s)")

    if n_workers <= 1 or n < _MIN_PARALLEL:
        _log(verbose, f"decoding {n} images to {h}x{w} in this process")
        for c, s in enumerate(starts):
            errs = _decode_into(X[s : s + _CHUNK], root, rels[s : s + _CHUNK], size_hw)
            failed.extend((s + k, reason) for k, reason in errs)
            if (c + 1) % 16 == 0 or s + _CHUNK >= n:
                progress(min(s + _CHUNK, n))
    else:
        from joblib import Parallel, delayed

        _log(verbose, f"decoding {n} images to {h}x{w} with {n_workers} processes")
        # Chunks are submitted in groups so that finished blocks are copied into X as they
        # come back, instead of all ~n*h*w*3 bytes of results being held at once.
        group = [starts[i : i + 4 * n_workers] for i in range(0, len(starts), 4 * n_workers)]
        with Parallel(n_jobs=n_workers, backend="loky") as parallel:
            for part in group:
                results = parallel(delayed(_decode_chunk)(root, rels[s : s + _CHUNK], size_hw) for s in part)
                for s, (block, errs) in zip(part, results):
                    X[s : s + len(block)] = block
                    failed.extend((s + k, reason) for k, reason in errs)
                del results
                progress(min(part[-1] + _CHUNK, n))

    if failed:
        bad = {i for i, _ in failed}
        j = 0
        for i in range(n):
            if i in bad:
                continue
            if i != j:
                X[j] = X[i]
            j += 1
        X.resize((j, h, w, 3), refcheck=False)
    return X, failed


def _build(root, labels, rels, hashes, read_errors, size_hw, deduplicate, n_jobs, verbose):
    """Decode the folder (cache miss): returns ``X`` and the metadata stored with it."""
    unreadable = list(read_errors)
    candidates = [i for i, h in enumerate(hashes) if h is not None]
    within, conflicts = [], []
    if deduplicate:
        dropped, within, conflicts = _plan_duplicates(labels, rels, hashes)
        candidates = [i for i in candidates if i not in dropped]
        if dropped:
            _log(verbose, f"dropping {len(dropped)} duplicate files")
    X, failed = _decode_all(root, [rels[i] for i in candidates], size_hw, n_jobs, verbose)
    bad = {j for j, _ in failed}
    unreadable.extend((rels[candidates[j]], reason) for j, reason in failed)
    unreadable.sort()
    kept = [i for j, i in enumerate(candidates) if j not in bad]
    if not kept:
        reasons = []
        if unreadable:
            shown = ", ".join(r for r, _ in unreadable[:_MAX_LISTED])
            reasons.append(f"{len(unreadable)} could not be decoded (e.g. {shown})")
        n_dup = len(rels) - len(unreadable)
        if n_dup:
            reasons.append(
                f"{n_dup} were dropped as byte-identical copies, which leave no image when the copies are in "
                "different class folders (their label is unknown; deduplicate=False keeps them)"
            )
        raise ValueError(f"no image left of the {len(rels)} image files in {root}: {'; '.join(reasons)}")
    meta = {
        "labels": [labels[i] for i in kept],
        "paths": [rels[i] for i in kept],
        "unreadable": [list(u) for u in unreadable],
        "duplicates_within_class": within,
        "duplicates_across_classes": conflicts,
    }
    return X, meta


def _summary(items):
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f", ... ({len(items) - _MAX_LISTED} more)"
    return shown


def _emit_warnings(meta, root):
    unreadable = meta["unreadable"]
    if unreadable:
        warnings.warn(
            f"load_pbc: skipped {len(unreadable)} file(s) in {root} that are not readable "
            f"images: {_summary([f'{r} ({why})' for r, why in unreadable])}",
            PBCDataWarning,
            stacklevel=3,
        )
    within = meta["duplicates_within_class"]
    conflicts = meta["duplicates_across_classes"]
    if within or conflicts:
        n_conf = sum(len(g) for g in conflicts)
        parts = []
        if within:
            parts.append(
                f"{len(within)} extra copies within a class (the first copy in name "
                f"order is kept; dropped: "
                f"{_summary([f'{d} (= {k})' for d, k in within])})"
            )
        if conflicts:
            parts.append(
                f"{n_conf} files in {len(conflicts)} group(s) of identical files with "
                f"different labels (label unknown, every copy dropped: "
                f"{_summary([' = '.join(g) for g in conflicts])})"
            )
        warnings.warn(
            f"load_pbc: dropped {len(within) + n_conf} byte-identical duplicate file(s) in "
            f"{root}: {'; and '.join(parts)}. find_duplicates(path) lists every group, "
            f"return_paths=True the files kept; deduplicate=False keeps them all.",
            PBCDataWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# Disk cache
# --------------------------------------------------------------------------------------------


def _cache_key(class_names, rels, hashes, size_hw, deduplicate):
    doc = {
        "format": _CACHE_FORMAT_VERSION,
        "resampling": _RESAMPLING,
        "image_size": list(size_hw),
        "deduplicate": bool(deduplicate),
        "classes": list(class_names),
        "files": [[r, h] for r, h in zip(rels, hashes)],
    }
    blob = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.blake2b(blob, digest_size=20).hexdigest()


def _entry_stem(cdir, key):
    return cdir / f"pbc-{key}"


def _crc32(X):
    return zlib.crc32(memoryview(np.ascontiguousarray(X)).cast("B"))


def _read_cache(cdir, key, verbose):
    """``(X, meta)`` from a valid cache entry, else ``None`` (warns if the entry was corrupt)."""
    stem = _entry_stem(cdir, key)
    npy, js = Path(f"{stem}.npy"), Path(f"{stem}.json")
    if not npy.exists() and not js.exists():
        return None
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
        if meta.get("format") != _CACHE_FORMAT_VERSION or meta.get("key") != key:
            raise ValueError("metadata does not match the entry's key")
        X = np.load(npy, mmap_mode=None, allow_pickle=False)
        shape = tuple(meta["shape"])
        if X.dtype != np.uint8 or X.shape != shape or not X.flags.c_contiguous:
            raise ValueError(f"array is {X.dtype} {X.shape}, expected uint8 {shape}")
        if not (len(meta["labels"]) == len(meta["paths"]) == shape[0]):
            raise ValueError("labels/paths do not match the array")
        if _crc32(X) != meta["crc32"]:
            raise ValueError("CRC32 mismatch")
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        # json.JSONDecodeError is a ValueError; np.load raises ValueError/OSError/EOFError.
        warnings.warn(
            f"load_pbc: cache entry {stem}.npy is corrupt or incomplete ({type(exc).__name__}: {exc}); rebuilding it",
            PBCDataWarning,
            stacklevel=3,
        )
        return None
    return X, meta


def _write_cache(cdir, key, X, meta, verbose):
    stem = _entry_stem(cdir, key)
    full = dict(meta, format=_CACHE_FORMAT_VERSION, key=key, shape=list(X.shape), dtype="uint8", crc32=_crc32(X))
    t0 = time.perf_counter()
    try:
        cdir.mkdir(parents=True, exist_ok=True)
        # The array first, the metadata last: an entry is valid only once both are in place.
        atomic_write(f"{stem}.npy", lambda f: np.lib.format.write_array(f, X, allow_pickle=False))
        blob = json.dumps(full, ensure_ascii=False).encode("utf-8")
        atomic_write(f"{stem}.json", lambda f: f.write(blob))
    except OSError as exc:
        warnings.warn(
            f"load_pbc: could not write the cache in {cdir} ({exc}); continuing without it",
            PBCDataWarning,
            stacklevel=3,
        )
        return
    _log(verbose, f"cached as {stem}.npy ({time.perf_counter() - t0:.1f} s)")


def _check_sizes(sizes):
    try:
        s = [float(v) for v in sizes]
    except TypeError:
        raise ValueError(f"sizes must be 3 fractions (train, val, test), got {sizes!r}") from None
    if len(s) != 3 or any(not np.isfinite(v) or v < 0 for v in s) or s[0] <= 0:
        raise ValueError(
            f"sizes must be 3 non-negative fractions (train, val, test) with a positive train fraction, got {sizes!r}"
        )
    if abs(sum(s) - 1.0) > 1e-6:
        raise ValueError(f"sizes must sum to 1, got {sizes!r} (sum {sum(s)})")
    return s
