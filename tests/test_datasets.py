"""Tests of ndlm_sk.datasets: folder loading, defects, dedup, cache, sample, splits."""

import json
import os
import shutil
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ndlm_sk import datasets
from ndlm_sk.datasets import (
    PBCDataWarning,
    clear_cache,
    default_cache_dir,
    find_duplicates,
    load_pbc,
    load_pbc_sample,
    pbc_sample_path,
    split_indices,
    train_val_test_split,
)
from PIL import Image

REAL_PBC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pbc"
BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


# --------------------------------------------------------------------------------------------
# A tiny PBC-like folder with every defect of the real one
# --------------------------------------------------------------------------------------------


def _write_image(path, size=(40, 36), seed=0, fmt="JPEG"):
    """A random-noise image of ``size`` = (width, height); distinct seeds give distinct bytes."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


@pytest.fixture
def pbc_dir(tmp_path):
    root = tmp_path / "pbc"
    for c in ("a", "b", "c", "empty"):
        (root / c).mkdir(parents=True)
    _write_image(root / "a" / "a1.jpg", (40, 36), seed=1)
    _write_image(root / "a" / "a2.jpg", (50, 30), seed=2)  # another size
    shutil.copyfile(root / "a" / "a1.jpg", root / "a" / "a_dup.jpg")  # duplicate within a class
    _write_image(root / "a" / "x.jpg", (36, 36), seed=6)
    shutil.copyfile(root / "a" / "x.jpg", root / "b" / "x.jpg")  # duplicate across classes
    _write_image(root / "b" / "b1.jpg", (40, 36), seed=3)
    _write_image(root / "b" / "b2.png", (64, 48), seed=4, fmt="PNG")
    _write_image(root / "b" / "b3.JPEG", (33, 47), seed=5)  # upper-case extension
    _write_image(root / "c" / "c1.jpg", (366, 369), seed=7)
    (root / "c" / ".DS_1234.jpg").write_bytes(b"\x00\x05\x16\x07Mac OS X metadata" * 20)
    (root / "c" / "notes.txt").write_text("not an image, not an image name")
    (root / "README.md").write_text("top-level files are ignored")
    return root


KEPT = ["a/a1.jpg", "a/a2.jpg", "b/b1.jpg", "b/b2.png", "b/b3.JPEG", "c/c1.jpg"]


def _pbc_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, PBCDataWarning)]


def _load(root, **kw):
    """load_pbc recording its warnings; returns (result, [messages])."""
    kw.setdefault("n_jobs", 1)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = load_pbc(root, **kw)
    return out, _pbc_warnings(rec)


@pytest.fixture
def decode_counter(monkeypatch):
    """Counts calls of the per-image decoder (in-process decoding only: n_jobs=1)."""
    calls = Counter()
    real = datasets._decode_image

    def counting(file, size_hw):
        calls[Path(file).name] += 1
        return real(file, size_hw)

    monkeypatch.setattr(datasets, "_decode_image", counting)
    return calls


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def test_load_defects_shapes_and_warnings(pbc_dir):
    (X, y, paths), msgs = _load(pbc_dir, image_size=32, cache=False, return_paths=True)
    assert X.shape == (6, 32, 32, 3)
    assert X.dtype == np.uint8 and X.flags.c_contiguous
    assert paths == KEPT  # sorted by class, then file name
    assert y.tolist() == ["a", "a", "b", "b", "b", "c"]
    assert y.dtype.kind == "U"

    assert len(msgs) == 3, msgs  # one each: empty class, unreadable files, duplicates
    (empty,) = [m for m in msgs if "without image files" in m]
    assert "empty" in empty
    (bad,) = [m for m in msgs if "not readable images" in m]
    assert "skipped 1 file" in bad and "c/.DS_1234.jpg" in bad
    (dup,) = [m for m in msgs if "byte-identical" in m]
    assert "dropped 3 byte-identical" in dup
    assert "a/a_dup.jpg (= a/a1.jpg)" in dup
    assert "a/x.jpg = b/x.jpg" in dup


def test_resize_matches_pillow_bilinear(pbc_dir):
    (X, y, paths), _ = _load(pbc_dir, image_size=(20, 28), cache=False, return_paths=True)
    assert X.shape == (6, 20, 28, 3)
    for i, rel in enumerate(paths):
        with Image.open(pbc_dir / rel) as im:
            ref = im.convert("RGB").resize((28, 20), BILINEAR, reducing_gap=None)
        np.testing.assert_array_equal(X[i], np.asarray(ref))


def test_uniform_image_stays_uniform(tmp_path):
    root = tmp_path / "d"
    (root / "k").mkdir(parents=True)
    Image.new("RGB", (360, 363), (200, 30, 90)).save(root / "k" / "u.png")
    Image.new("L", (366, 369), 77).save(root / "k" / "gray.png")  # grey -> RGB
    (X, y), msgs = _load(root, image_size=300, cache=False)
    assert msgs == []
    assert X.shape == (2, 300, 300, 3)
    assert (X[0] == 77).all()
    assert (X[1] == [200, 30, 90]).all()


def test_deduplicate_false_keeps_every_readable_file(pbc_dir):
    (X, y, paths), msgs = _load(pbc_dir, image_size=16, cache=False, deduplicate=False, return_paths=True)
    assert paths == [
        "a/a1.jpg",
        "a/a2.jpg",
        "a/a_dup.jpg",
        "a/x.jpg",
        "b/b1.jpg",
        "b/b2.png",
        "b/b3.JPEG",
        "b/x.jpg",
        "c/c1.jpg",
    ]
    assert not any("byte-identical" in m for m in msgs)
    np.testing.assert_array_equal(X[0], X[2])


def test_find_duplicates(pbc_dir):
    assert find_duplicates(pbc_dir) == [["a/a1.jpg", "a/a_dup.jpg"], ["a/x.jpg", "b/x.jpg"]]
    assert find_duplicates(pbc_dir, classes=["b", "c"]) == []


def test_classes_subset(pbc_dir):
    (X, y, paths), msgs = _load(pbc_dir, image_size=8, cache=False, classes=["b"], return_paths=True)
    # Duplicate detection only sees the selected classes: b/x.jpg has no conflict here.
    assert paths == ["b/b1.jpg", "b/b2.png", "b/b3.JPEG", "b/x.jpg"]
    assert set(y) == {"b"} and msgs == []
    with pytest.raises(ValueError, match="not found"):
        load_pbc(pbc_dir, classes=["b", "nope"], cache=False)


def test_errors(tmp_path, pbc_dir):
    with pytest.raises(FileNotFoundError):
        load_pbc(tmp_path / "missing", cache=False)
    (tmp_path / "void").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        load_pbc(tmp_path / "void", cache=False)
    (tmp_path / "only_empty" / "k").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files"):
        load_pbc(tmp_path / "only_empty", cache=False)
    (tmp_path / "all_bad" / "k").mkdir(parents=True)
    (tmp_path / "all_bad" / "k" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="1 could not be decoded"):
        load_pbc(tmp_path / "all_bad", cache=False)
    # copies of one image in two class folders: the label is unknown, nothing is left
    for k in ("a", "b"):
        (tmp_path / "all_copies" / k).mkdir(parents=True)
        _write_image(tmp_path / "all_copies" / k / "x.jpg")
    with pytest.raises(ValueError, match="2 were dropped as byte-identical copies") as info:
        load_pbc(tmp_path / "all_copies", cache=False)
    assert "decoded" not in str(info.value)
    with pytest.raises(NotADirectoryError):
        load_pbc(pbc_dir / "README.md", cache=False)
    for bad in (0, -3, (1, 2, 3), "300", 2.5, True):
        with pytest.raises(ValueError, match="image_size"):
            load_pbc(pbc_dir, image_size=bad, cache=False)


def test_truncated_jpeg_is_skipped(tmp_path):
    root = tmp_path / "t"
    (root / "k").mkdir(parents=True)
    _write_image(root / "k" / "good.jpg", seed=1)
    data = _write_image(root / "k" / "cut.jpg", (200, 200), seed=2).read_bytes()
    (root / "k" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (X, y, paths), msgs = _load(root, image_size=8, cache=False, return_paths=True)
    assert paths == ["k/good.jpg"]
    assert len(msgs) == 1 and "k/cut.jpg" in msgs[0]


def test_parallel_decoding_matches_serial(pbc_dir, monkeypatch):
    (X1, y1), _ = _load(pbc_dir, image_size=24, cache=False, n_jobs=1)
    monkeypatch.setattr(datasets, "_MIN_PARALLEL", 0)
    monkeypatch.setattr(datasets, "_CHUNK", 2)  # several chunks, one with the unreadable file
    (X2, y2), msgs = _load(pbc_dir, image_size=24, cache=False, n_jobs=2)
    np.testing.assert_array_equal(X1, X2)
    assert y1.tolist() == y2.tolist()
    assert any(".DS_1234.jpg" in m for m in msgs)


def test_verbose_progress(pbc_dir, capsys):
    _load(pbc_dir, image_size=8, cache=False, verbose=True)
    err = capsys.readouterr().err
    assert "found 10 image files in 4 class folders" in err
    assert "decoded 7/7 images" in err


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def _entries(cache_dir):
    return sorted(p.name for p in Path(cache_dir).iterdir())


def test_cache_hit_does_not_decode(pbc_dir, tmp_path, decode_counter, monkeypatch):
    cdir = tmp_path / "cache"
    (X1, y1, p1), msgs1 = _load(pbc_dir, image_size=16, cache_dir=cdir, return_paths=True)
    assert sum(decode_counter.values()) == 7  # 6 kept + the unreadable one; no duplicate
    names = _entries(cdir)
    assert len(names) == 2 and names[0].endswith(".json") and names[1].endswith(".npy")
    meta = json.loads((cdir / names[0]).read_text())
    assert meta["paths"] == KEPT and meta["shape"] == [6, 16, 16, 3]
    np.load(cdir / names[1], allow_pickle=False)  # a plain .npy, no pickle

    def boom(*a, **k):
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(datasets, "_decode_image", boom)
    (X2, y2, p2), msgs2 = _load(pbc_dir, image_size=16, cache_dir=cdir, return_paths=True)
    np.testing.assert_array_equal(X1, X2)
    assert y1.tolist() == y2.tolist() and p1 == p2
    assert isinstance(X2, np.ndarray) and not isinstance(X2, np.memmap)
    assert X2.flags.c_contiguous and X2.flags.writeable
    assert msgs2 == msgs1  # the same warnings from the cache


def test_cache_key_covers_settings(pbc_dir, tmp_path, decode_counter):
    cdir = tmp_path / "cache"
    _load(pbc_dir, image_size=16, cache_dir=cdir)
    _load(pbc_dir, image_size=16, cache_dir=cdir)
    assert sum(decode_counter.values()) == 7
    _load(pbc_dir, image_size=(16, 12), cache_dir=cdir)
    _load(pbc_dir, image_size=16, cache_dir=cdir, deduplicate=False)
    _load(pbc_dir, image_size=16, cache_dir=cdir, classes=["a"])
    # (16, 12): 7; deduplicate=False: all 10 files; classes=["a"]: a1, a2, x (a_dup dropped)
    assert sum(decode_counter.values()) == 7 + 7 + 10 + 3
    assert len(_entries(cdir)) == 8
    # classes=None and the full list are the same entry
    before = sum(decode_counter.values())
    _load(pbc_dir, image_size=16, cache_dir=cdir, classes=["c", "b", "a", "empty"])
    assert sum(decode_counter.values()) == before


def test_cache_invalidated_by_changed_added_removed_file(pbc_dir, tmp_path, decode_counter):
    cdir = tmp_path / "cache"
    (X1, _, p1), _ = _load(pbc_dir, image_size=16, cache_dir=cdir, return_paths=True)
    st = os.stat(pbc_dir / "b" / "b1.jpg")
    _write_image(pbc_dir / "b" / "b1.jpg", (40, 36), seed=99)  # same size, new content
    os.utime(pbc_dir / "b" / "b1.jpg", ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    decode_counter.clear()
    (X2, _, p2), _ = _load(pbc_dir, image_size=16, cache_dir=cdir, return_paths=True)
    assert sum(decode_counter.values()) == 7
    i = p1.index("b/b1.jpg")
    assert not np.array_equal(X1[i], X2[i])

    _write_image(pbc_dir / "c" / "c2.jpg", seed=100)
    decode_counter.clear()
    (X3, _, p3), _ = _load(pbc_dir, image_size=16, cache_dir=cdir, return_paths=True)
    assert sum(decode_counter.values()) == 8 and "c/c2.jpg" in p3

    (pbc_dir / "c" / "c2.jpg").unlink()
    decode_counter.clear()
    (X4, _, p4), _ = _load(pbc_dir, image_size=16, cache_dir=cdir, return_paths=True)
    assert sum(decode_counter.values()) == 0  # back to the second entry
    np.testing.assert_array_equal(X4, X2)


def _corrupt(kind, npy, js):
    if kind == "truncated_npy":
        data = npy.read_bytes()
        npy.write_bytes(data[: len(data) - 100])
    elif kind == "garbage_npy":
        npy.write_bytes(b"garbage" * 50)
    elif kind == "flipped_byte":
        data = bytearray(npy.read_bytes())
        data[-10] ^= 0xFF
        npy.write_bytes(bytes(data))
    elif kind == "bad_json":
        js.write_text("{not json")
    elif kind == "missing_json":
        js.unlink()
    elif kind == "missing_npy":
        npy.unlink()


@pytest.mark.parametrize(
    "kind", ["truncated_npy", "garbage_npy", "flipped_byte", "bad_json", "missing_json", "missing_npy"]
)
def test_corrupt_cache_is_rebuilt(pbc_dir, tmp_path, decode_counter, kind):
    cdir = tmp_path / "cache"
    (X1, y1), _ = _load(pbc_dir, image_size=16, cache_dir=cdir)
    js, npy = (cdir / n for n in _entries(cdir))
    _corrupt(kind, npy, js)
    decode_counter.clear()
    (X2, y2), msgs = _load(pbc_dir, image_size=16, cache_dir=cdir)
    assert any("corrupt or incomplete" in m and "rebuilding" in m for m in msgs), msgs
    assert sum(decode_counter.values()) == 7
    np.testing.assert_array_equal(X1, X2)
    decode_counter.clear()
    (X3, _), msgs = _load(pbc_dir, image_size=16, cache_dir=cdir)  # healthy again
    assert sum(decode_counter.values()) == 0
    assert not any("corrupt or incomplete" in m for m in msgs)


def test_failed_cache_write_leaves_nothing_behind(pbc_dir, tmp_path, monkeypatch):
    cdir = tmp_path / "cache"
    real_write = np.lib.format.write_array

    def disk_full(f, array, **kw):
        f.write(b"\x93NUMPY partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", disk_full)
    (X1, _), msgs = _load(pbc_dir, image_size=16, cache_dir=cdir)
    assert X1.shape == (6, 16, 16, 3)
    assert any("could not write the cache" in m for m in msgs)
    assert _entries(cdir) == []  # the temporary file was removed, nothing half-written

    monkeypatch.setattr(np.lib.format, "write_array", real_write)
    (X2, _), msgs = _load(pbc_dir, image_size=16, cache_dir=cdir)
    assert not any("corrupt or incomplete" in m or "could not" in m for m in msgs)
    assert len(_entries(cdir)) == 2


def test_interrupted_cache_write_leaves_nothing_behind(pbc_dir, tmp_path, monkeypatch):
    cdir = tmp_path / "cache"

    def interrupted(f, array, **kw):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np.lib.format, "write_array", interrupted)
    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_pbc(pbc_dir, image_size=16, cache_dir=cdir, n_jobs=1)
    assert _entries(cdir) == []


def test_default_cache_dir_and_clear_cache(pbc_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NDLM_SK_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    _load(pbc_dir, image_size=8)
    assert len(_entries(tmp_path / "envcache")) == 2
    (tmp_path / "envcache" / "keep.txt").write_text("not ours")
    assert clear_cache() == 2
    assert _entries(tmp_path / "envcache") == ["keep.txt"]
    monkeypatch.delenv("NDLM_SK_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "ndlm_sk"


def test_cache_stores_crc(pbc_dir, tmp_path):
    cdir = tmp_path / "cache"
    (X, _), _ = _load(pbc_dir, image_size=16, cache_dir=cdir)
    js = next(cdir.glob("*.json"))
    assert json.loads(js.read_text())["crc32"] == zlib.crc32(X.tobytes())


# --------------------------------------------------------------------------------------------
# Embedded sample
# --------------------------------------------------------------------------------------------

CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]


def test_sample_files_and_readme():
    root = pbc_sample_path()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == CLASSES
    for c in CLASSES:
        files = sorted((root / c).iterdir())
        assert len(files) == 40 and all(f.suffix == ".jpg" for f in files)
        sizes = Counter()
        for f in files:
            with Image.open(f) as im:
                sizes[im.size] += 1
        assert sizes == {(360, 363): 38, (366, 369): 2}
    readme = (root / "README.md").read_text(encoding="utf-8")
    for needle in ("Acevedo", "Data in Brief", "105474", "CC BY 4.0", "random.Random(0)"):
        assert needle in readme


def test_load_pbc_sample():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the sample has no defects: no warning at all
        X, y, paths = load_pbc_sample(return_paths=True)
    assert X.shape == (200, 300, 300, 3) and X.dtype == np.uint8 and X.flags.c_contiguous
    assert Counter(y.tolist()) == {c: 40 for c in CLASSES}
    assert paths[0].startswith("basophil/") and paths[-1].startswith("neutrophil/")
    assert 60 < X.mean() < 250  # real image content, not zeros

    X64, y64 = load_pbc_sample(image_size=64)
    assert X64.shape == (200, 64, 64, 3) and X64.dtype == np.uint8
    assert y64.tolist() == y.tolist()


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _labels():
    return np.array(["a"] * 100 + ["b"] * 60 + ["c"] * 40)


def test_split_indices_stratified_and_disjoint():
    y = _labels()
    tr, va, te = split_indices(y)
    assert (len(tr), len(va), len(te)) == (100, 50, 50)
    allidx = np.concatenate([tr, va, te])
    assert sorted(allidx.tolist()) == list(range(len(y)))
    for part, n in ((tr, 100), (va, 50), (te, 50)):
        counts = Counter(y[part].tolist())
        assert counts == {"a": n // 2, "b": n * 3 // 10, "c": n // 5}
    again = split_indices(y, random_state=0)
    for a, b in zip((tr, va, te), again):
        np.testing.assert_array_equal(a, b)
    other = split_indices(y, random_state=1)
    assert not np.array_equal(tr, other[0])


def test_split_sizes():
    y = _labels()
    tr, va, te = split_indices(y, sizes=(0.6, 0.2, 0.2))
    assert (len(tr), len(va), len(te)) == (120, 40, 40)
    tr, va, te = split_indices(y, sizes=(0.75, 0.0, 0.25))
    assert (len(tr), len(va), len(te)) == (150, 0, 50)
    tr, va, te = split_indices(y, sizes=(0.75, 0.25, 0.0))
    assert (len(tr), len(va), len(te)) == (150, 50, 0)
    for bad in ((0.5, 0.5), (0.5, 0.3, 0.3), (0.0, 0.5, 0.5), (0.5, -0.1, 0.6)):
        with pytest.raises(ValueError):
            split_indices(y, sizes=bad)


def test_train_val_test_split_keeps_rows_aligned():
    y = _labels()
    X = np.zeros((len(y), 4, 4, 3), dtype=np.uint8)
    X[:, 0, 0, 0] = np.arange(len(y)) % 256
    X[:, 0, 0, 1] = np.arange(len(y)) // 256
    X_tr, X_va, X_te, y_tr, y_va, y_te = train_val_test_split(X, y)
    assert X_tr.shape == (100, 4, 4, 3) and X_va.shape == (50, 4, 4, 3)
    for Xp, yp in ((X_tr, y_tr), (X_va, y_va), (X_te, y_te)):
        ids = Xp[:, 0, 0, 0].astype(int) + 256 * Xp[:, 0, 0, 1].astype(int)
        np.testing.assert_array_equal(y[ids], yp)
    with pytest.raises(ValueError, match="different lengths"):
        train_val_test_split(X[:-1], y)


# --------------------------------------------------------------------------------------------
# The real PBC folder (slow; needs ../shared/data/pbc)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not REAL_PBC.is_dir(), reason="needs ../shared/data/pbc")
def test_real_pbc_folder(tmp_path):
    cdir = tmp_path / "cache"
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            X, y, paths = load_pbc(REAL_PBC, cache_dir=cdir, n_jobs=2, return_paths=True)
        t_first = time.perf_counter() - t0
        msgs = _pbc_warnings(rec)
        assert len(msgs) == 2, msgs
        (bad,) = [m for m in msgs if "not readable" in m]
        assert "skipped 1 file" in bad and "neutrophil/.DS_169665.jpg" in bad
        (dup,) = [m for m in msgs if "byte-identical" in m]
        assert "dropped 12 byte-identical" in dup
        assert "eosinophil/EO_225902.jpg = neutrophil/BNE_191112.jpg" in dup

        groups = find_duplicates(REAL_PBC)
        assert len(groups) == 11
        kept = set(paths)
        for g in groups:
            if len({p.split("/")[0] for p in g}) > 1:
                assert not kept & set(g)  # conflicting labels: every copy dropped
            else:
                assert g[0] in kept and not kept & set(g[1:])

        n = 9268 - 12  # 9,268 images (+1 non-image file), 12 duplicate files dropped
        assert X.shape == (n, 300, 300, 3) and X.dtype == np.uint8 and X.flags.c_contiguous
        assert len(y) == len(paths) == n
        assert Counter(y.tolist()) == {
            "basophil": 1092,
            "eosinophil": 2799,
            "lymphocyte": 1093,
            "monocyte": 1277,
            "neutrophil": 2995,
        }
        for i in (0, n // 2, n - 1):
            with Image.open(REAL_PBC / paths[i]) as im:
                ref = im.convert("RGB").resize((300, 300), BILINEAR, reducing_gap=None)
            np.testing.assert_array_equal(X[i], np.asarray(ref))
        crc_first = zlib.crc32(X)
        del X

        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            X2, y2 = load_pbc(REAL_PBC, cache_dir=cdir, n_jobs=2)
        t_cached = time.perf_counter() - t0
        assert _pbc_warnings(rec) == msgs
        assert zlib.crc32(X2) == crc_first and y2.tolist() == y.tolist()
        print(f"\nreal PBC folder: first load {t_first:.1f} s, cached load {t_cached:.1f} s")
    finally:
        shutil.rmtree(cdir, ignore_errors=True)  # ~2.5 GB


def test_read_image_rgb_and_grayscale(tmp_path):
    """One reader for load_pbc, the CLI's predict and count: RGB or grayscale, resized as load_pbc."""
    from ndlm_sk.datasets import read_image

    path = _write_image(tmp_path / "a.png", size=(40, 36), fmt="PNG")
    with Image.open(path) as im:
        want_rgb = np.asarray(im.convert("RGB").resize((20, 24), BILINEAR, reducing_gap=None))
        want_gray = np.asarray(im.convert("L").resize((20, 24), BILINEAR, reducing_gap=None))
    np.testing.assert_array_equal(read_image(path, (24, 20)), want_rgb)
    gray = read_image(path, (24, 20), channels=1)
    assert gray.shape == (24, 20, 1) and gray.dtype == np.uint8
    np.testing.assert_array_equal(gray[..., 0], want_gray)
    with pytest.raises(ValueError, match="channels must be 1"):
        read_image(path, 8, channels=4)
