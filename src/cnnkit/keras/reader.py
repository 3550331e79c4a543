"""Read what a Keras file holds — its JSON config and its weight arrays — with ``zipfile``, ``json`` and
``h5py`` alone, treating the file as untrusted.

Two formats:

* **Keras 3 archives** (``.keras``): a zip with ``config.json``, ``metadata.json`` and
  ``model.weights.h5``. Each layer's variables are ``layers/<path>/vars/0, 1, …`` (an RNN's are under
  ``layers/<path>/cell/vars``); the group's ``name`` attribute gives the layer name.
* **Legacy HDF5** (``.h5``, Keras 2 / tf-keras or Keras 3's ``model.save("x.h5")``): the ``model_config``
  attribute holds the JSON config; ``model_weights/<layer>`` lists its arrays in ``weight_names``.

Nothing is ever executed or unpickled: the config is parsed with :func:`json.loads`, arrays are read from
HDF5 only if they are plain numbers, and only after their shapes have been checked. Only what Keras
writes is accepted (see ``docs/keras.md``, "Untrusted files"):

* links are never followed: every path is walked one hard link at a time (soft and external links are
  refused by name), and groups are walked iteratively with a depth and object limit (no recursion, no
  cycles);
* a dataset must be stored inside the file, contiguous, chunked or compact (no external storage, no
  virtual dataset), hold every byte it declares (no unwritten or partly written datasets), and have a
  plain integer or IEEE float type of at most 8 bytes (big-endian arrays are converted to native order);
* HDF5's global heaps (where variable-length strings such as ``model_config`` live) are checked before
  any string is read: a damaged heap makes HDF5 loop forever;
* zip members are refused when they declare more than a cap, and read with a streaming cap: the weights
  file's cap comes from the sizes the config asks for (see :meth:`KerasFile.open_weights`).
"""

from __future__ import annotations

import json
import re
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnkit.errors import CnnkitError

__all__ = ["KerasFile", "KerasFileError", "WeightRef", "open_keras_file"]

MAX_CONFIG_BYTES = 64 * 2**20
MAX_WEIGHTS_BYTES = 16 * 2**30
MAX_GROUP_DEPTH = 16  # below a layer's group; Keras writes 2 (``cell/vars``)
MAX_H5_OBJECTS = 100_000  # groups and datasets looked at in one file
MAX_WEIGHT_NAMES = 10_000  # entries of one layer's ``weight_names``
MAX_CHUNKS = 2**20  # chunks of one dataset
_SPOOL_BYTES = 256 * 2**20
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_AGAIN = "Re-save it with Keras (model.save('model.keras')) from a copy you trust."


class KerasFileError(CnnkitError, ValueError):
    """A Keras file that cannot be read: not a Keras file, truncated, malformed, or inconsistent."""


@dataclass(frozen=True)
class WeightRef:
    """One stored array, not yet read: its name in the file, shape, native dtype, and a reader."""

    name: str
    shape: tuple[int, ...]
    read: Callable[[], np.ndarray] = field(repr=False, compare=False)
    dtype: np.dtype = field(default=np.dtype("float32"), compare=False)

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for s in self.shape:
            n *= s
        return n


@dataclass
class KerasFile:
    """A Keras file's model config and, once :meth:`open_weights` is called, its weight arrays.

    ``weights(layer_name, class_name, index)`` lists one layer's arrays in storage order (shapes only;
    nothing is read until ``WeightRef.read()``).
    """

    path: str
    format: str  # "keras" (Keras 3 archive) or "h5" (legacy HDF5)
    keras_version: str
    config: dict
    weights: Callable[[str, str, int], list[WeightRef]] = field(repr=False)
    close: Callable[[], None] = field(repr=False)
    _open_weights: Callable[[int], None] | None = field(default=None, repr=False)

    @property
    def keras_major(self) -> int:
        match = re.match(r"\s*(\d+)", self.keras_version)
        return int(match.group(1)) if match else 3

    def open_weights(self, max_bytes: int) -> None:
        """Make the weight arrays available, reading at most ``max_bytes`` of an archive's weights file.

        A legacy ``.h5`` holds its weights in the file already open; a ``.keras`` archive's
        ``model.weights.h5`` is refused if it declares more than ``max_bytes`` and is extracted with that
        streaming cap.
        """
        if self._open_weights is not None:
            self._open_weights(max_bytes)
            self._open_weights = None


def _h5py():
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - h5py is a dependency
        raise CnnkitError("Reading Keras files needs h5py: pip install h5py.") from error
    return h5py


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)


def _parse_json(data: bytes | str, what: str, path: str) -> dict:
    try:
        config = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise KerasFileError(f"{path}: {what} is not valid JSON ({error}).") from None
    if not isinstance(config, dict):
        raise KerasFileError(f"{path}: {what} must be a JSON object. Received a {type(config).__name__}.")
    return config


def _snake_case(name: str) -> str:
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


# --- HDF5 global heaps -------------------------------------------------------------------------------


def _check_global_heaps(f, size: int, path: str) -> None:
    """Refuse an HDF5 file whose global heap collections HDF5 would loop on forever.

    HDF5 (up to 2.0 at least) decodes a collection's objects with ``image = begin + need``; a free-space
    object (index 0) of size 0 gives ``need = 0`` and the loop never ends (a ~1 KB span duplicated inside
    a valid file is enough). Every ``GCOL`` signature in the file is checked the way HDF5 walks it: each
    object must move forward and stay inside its collection. ``f`` is a binary file object of ``size``
    bytes; it is read in blocks (constant memory).
    """
    f.seek(0)
    superblock = f.read(16)
    if len(superblock) < 16 or not superblock.startswith(_HDF5_SIGNATURE):
        return  # h5py refuses it
    version = superblock[8]
    if version in (0, 1):
        f.seek(14)
        lengths = f.read(1)[0]
    else:
        lengths = superblock[10] if len(superblock) > 10 else 8
    if lengths not in (2, 4, 8, 16):
        raise KerasFileError(f"{path}: the HDF5 superblock declares {lengths}-byte lengths; is the file damaged?")
    length_fmt = {2: "<H", 4: "<I", 8: "<Q", 16: None}[lengths]
    header = 8 + lengths  # "GCOL", version, 3 reserved bytes, collection size
    object_header = 8 + lengths  # index (2), refcount (2), reserved (4), size

    def u(data: bytes, offset: int) -> int:
        if length_fmt is None:
            return int.from_bytes(data[offset:offset + 16], "little")
        return struct.unpack_from(length_fmt, data, offset)[0]

    block, overlap = 16 * 2**20, 3
    offsets = []
    position, tail = 0, b""
    f.seek(0)
    while True:
        chunk = f.read(block)
        if not chunk:
            break
        data = tail + chunk
        base = position - len(tail)
        start = data.find(b"GCOL")
        while start >= 0:
            offsets.append(base + start)
            if len(offsets) > MAX_H5_OBJECTS:
                raise KerasFileError(f"{path}: more than {MAX_H5_OBJECTS} HDF5 global heaps; is the file damaged?")
            start = data.find(b"GCOL", start + 1)
        tail = data[-overlap:]
        position += len(chunk)
    for offset in offsets:
        f.seek(offset)
        head = f.read(header)
        if len(head) < header or head[4] != 1:
            continue  # HDF5 refuses a collection of another version
        end = offset + u(head, 8)
        if end > size or end < offset + header:
            continue  # HDF5 refuses a collection that runs past the end of the file
        heap = head + f.read(end - offset - header)
        p = header
        while p < len(heap):
            if p + object_header > len(heap):
                break  # the rest is free space
            index = struct.unpack_from("<H", heap, p)[0]
            n = u(heap, p + 8)
            need = object_header + (n + 7) // 8 * 8 if index else n
            if need <= 0 or need > len(heap) - p:
                raise KerasFileError(
                    f"{path}: HDF5 global heap at byte {offset} is damaged (object {index} at byte {offset + p} "
                    f"declares {n} bytes; HDF5 would loop forever or read outside the heap). {_AGAIN}")
            p += need


# --- HDF5 objects, one hard link at a time -----------------------------------------------------------


class _H5:
    """An open HDF5 file walked safely: hard links only, numeric datasets stored in the file."""

    def __init__(self, h5py, handle, size: int, path: str, where: str):
        self.h5py, self.handle, self.size, self.path, self.where = h5py, handle, size, path, where
        self.seen = 0
        self._numeric = {}
        t = h5py.h5t
        for fmt, tid in (("<f2", "IEEE_F16LE"), (">f2", "IEEE_F16BE"), ("<f4", "IEEE_F32LE"),
                         (">f4", "IEEE_F32BE"), ("<f8", "IEEE_F64LE"), (">f8", "IEEE_F64BE")):
            if hasattr(t, tid):
                self._numeric[fmt] = getattr(t, tid)

    def _count(self) -> None:
        self.seen += 1
        if self.seen > MAX_H5_OBJECTS:
            raise KerasFileError(f"{self.path}: {self.where} holds more than {MAX_H5_OBJECTS} HDF5 objects; "
                                 "a Keras file holds a few per layer.")

    def child(self, group, key: str, label: str, kind: str | None = None):
        """``group[key]`` if it is a hard link to a ``kind`` ("group" or "dataset"), else ``None`` if absent.

        Soft and external links are refused by name, never followed.
        """
        self._count()
        link = group.get(key, getlink=True)
        if link is None:
            return None
        if isinstance(link, self.h5py.SoftLink):
            raise KerasFileError(f"{self.path}: {self.where} {label!r} is a soft link (to {link.path!r}); "
                                 f"Keras files hold no links and cnnkit never follows one. {_AGAIN}")
        if isinstance(link, self.h5py.ExternalLink):
            raise KerasFileError(
                f"{self.path}: {self.where} {label!r} is an external link (to {link.filename!r}:{link.path!r}); "
                f"Keras files hold no links and cnnkit never reads another file. {_AGAIN}")
        if not isinstance(link, self.h5py.HardLink):
            raise KerasFileError(f"{self.path}: {self.where} {label!r} is a {type(link).__name__}; "
                                 f"only hard links are read. {_AGAIN}")
        cls = group.get(key, getclass=True)
        want = {"group": self.h5py.Group, "dataset": self.h5py.Dataset}.get(kind)
        if want is not None and cls is not want:
            raise KerasFileError(f"{self.path}: {self.where} {label!r} must be an HDF5 {kind}. "
                                 f"Received {getattr(cls, '__name__', cls)}.")
        if cls not in (self.h5py.Group, self.h5py.Dataset):
            raise KerasFileError(f"{self.path}: {self.where} {label!r} is an HDF5 "
                                 f"{getattr(cls, '__name__', cls)}, not a group or dataset.")
        return group[key]

    def walk(self, group, label: str, parts: list[str], kind: str):
        """Follow ``parts`` from ``group``, one checked hard link at a time; ``None`` if a part is absent."""
        obj = group
        for i, part in enumerate(parts):
            if not part or part in (".", ".."):
                raise KerasFileError(f"{self.path}: {self.where} path {label!r} has an empty or relative part.")
            obj = self.child(obj, part, "/".join(parts[: i + 1]), kind if i == len(parts) - 1 else "group")
            if obj is None:
                return None
        return obj

    def string_attr(self, obj, name: str, label: str, *, many: bool = False):
        """A string attribute (or, with ``many``, a 1-D array of strings), checked before it is read."""
        h5py = self.h5py
        if not h5py.h5a.exists(obj.id, name.encode()):
            return None
        attr = h5py.h5a.open(obj.id, name.encode())
        tid = attr.get_type()
        shape = attr.shape
        if many and shape is not None and len(shape) == 1 and shape[0] == 0:
            return []  # an empty list (h5py writes it as an empty float array)
        if tid.get_class() != h5py.h5t.STRING:
            raise KerasFileError(f"{self.path}: attribute {label!r} must hold text. Received HDF5 type class "
                                 f"{tid.get_class()}.")
        count = 1
        for s in shape or ():
            count *= int(s)
        if (not many and count != 1) or (many and (len(shape or ()) > 1 or count > MAX_WEIGHT_NAMES)):
            expected = f"a list of at most {MAX_WEIGHT_NAMES} strings" if many else "one string"
            raise KerasFileError(f"{self.path}: attribute {label!r} has shape {shape}; expected {expected}.")
        if not tid.is_variable_str() and tid.get_size() * count > MAX_CONFIG_BYTES:
            raise KerasFileError(f"{self.path}: attribute {label!r} holds {tid.get_size() * count} bytes; "
                                 f"at most {MAX_CONFIG_BYTES} are read.")
        value = obj.attrs[name]
        if many:
            return [_text(v) for v in np.asarray(value).ravel()]
        return _text(value)

    def dataset(self, obj, name: str) -> WeightRef:
        """Check that ``obj`` is a dataset Keras could have written, and return a reader for it."""
        h5py, path = self.h5py, self.path
        if not isinstance(obj, h5py.Dataset):
            raise KerasFileError(f"{path}: weight {name!r} is not an HDF5 dataset.")
        dcpl = obj.id.get_create_plist()
        layout = dcpl.get_layout()
        if layout == h5py.h5d.VIRTUAL or obj.is_virtual:
            raise KerasFileError(f"{path}: weight {name!r} is a virtual dataset (it maps other files' data); "
                                 f"Keras never writes one and cnnkit never reads another file. {_AGAIN}")
        if dcpl.get_external_count():
            raise KerasFileError(f"{path}: weight {name!r} uses HDF5 external storage (its bytes live in another "
                                 f"file, {dcpl.get_external(0)[0]!r}); cnnkit reads only data stored inside the "
                                 f"Keras file. {_AGAIN}")
        if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT):
            raise KerasFileError(f"{path}: weight {name!r} has HDF5 layout {layout}; only contiguous, chunked "
                                 "and compact datasets are read.")
        dtype = self._dtype(obj, name)
        space = obj.id.get_space()
        if space.get_simple_extent_type() != h5py.h5s.SIMPLE and obj.shape != ():
            raise KerasFileError(f"{path}: weight {name!r} has no simple dataspace (shape {obj.shape}).")
        shape = tuple(int(s) for s in (obj.shape or ()))
        if len(shape) > 8:
            raise KerasFileError(f"{path}: weight {name!r} has rank {len(shape)}; Keras weights have rank ≤ 8.")
        ref = WeightRef(name, shape, lambda: None, dtype)
        nbytes = ref.nbytes
        if nbytes:
            self._check_storage(obj, name, dcpl, layout, shape, dtype, nbytes)

        def read() -> np.ndarray:
            array = np.empty(shape, dtype=dtype)
            if nbytes:
                try:
                    obj.read_direct(array)
                except (OSError, RuntimeError, ValueError, TypeError, KeyError) as error:
                    raise KerasFileError(f"{path}: weight {name!r} could not be read ({error}); is the file "
                                         "truncated?") from None
            return array

        return WeightRef(name, shape, read, dtype)

    def _dtype(self, obj, name: str) -> np.dtype:
        h5py = self.h5py
        tid = obj.id.get_type()
        cls, size = tid.get_class(), tid.get_size()
        if cls == h5py.h5t.INTEGER and size in (1, 2, 4, 8):
            signed = tid.get_sign() == h5py.h5t.SGN_2
            return np.dtype(f"{'i' if signed else 'u'}{size}")
        if cls == h5py.h5t.FLOAT:
            for fmt, standard in self._numeric.items():
                if tid.equal(standard):
                    return np.dtype(fmt[1:])  # native byte order: HDF5 converts big-endian on read
            raise KerasFileError(f"{self.path}: weight {name!r} has a non-IEEE or extended float type ({size} "
                                 f"bytes, e.g. float128 / long double); only float16/32/64 are read.")
        kind = {h5py.h5t.COMPOUND: "compound", h5py.h5t.OPAQUE: "opaque", h5py.h5t.VLEN: "variable-length",
                h5py.h5t.REFERENCE: "reference", h5py.h5t.STRING: "string", h5py.h5t.ENUM: "enum",
                h5py.h5t.ARRAY: "array", h5py.h5t.BITFIELD: "bitfield", h5py.h5t.TIME: "time"}.get(cls, str(cls))
        raise KerasFileError(f"{self.path}: weight {name!r} must hold numbers. Received an HDF5 {kind} type "
                             f"(dtype {obj.dtype}; never unpickled or interpreted).")

    def _check_storage(self, obj, name, dcpl, layout, shape, dtype, nbytes) -> None:
        """Every declared byte must be stored in the file: no sparse, unwritten or out-of-file data."""
        h5py, path = self.h5py, self.path
        stored = obj.id.get_storage_size()
        unwritten = (f"{path}: weight {name!r} declares shape {shape} ({nbytes} bytes of {dtype}) but the file "
                     f"stores {{}}; a dataset Keras writes holds all its values (it is truncated, sparse or "
                     f"was never written). {_AGAIN}")
        if layout == h5py.h5d.CONTIGUOUS:
            offset = obj.id.get_offset()
            if stored != nbytes or offset is None:
                raise KerasFileError(unwritten.format(f"{stored} bytes"))
            if offset + nbytes > self.size:
                raise KerasFileError(unwritten.format(f"them at bytes {offset}…{offset + nbytes}, past the end "
                                                      f"of the {self.size}-byte file"))
        elif layout == h5py.h5d.COMPACT:
            if stored != nbytes:
                raise KerasFileError(unwritten.format(f"{stored} bytes"))
        else:
            chunk = tuple(int(c) for c in (obj.chunks or ()))
            if len(chunk) != len(shape) or any(c < 1 for c in chunk):
                raise KerasFileError(f"{path}: weight {name!r} has chunk shape {chunk} for shape {shape}.")
            expected = 1
            for s, c in zip(shape, chunk):
                expected *= -(-s // c)
            if expected > MAX_CHUNKS:
                raise KerasFileError(f"{path}: weight {name!r} is split into {expected} chunks; at most "
                                     f"{MAX_CHUNKS} are read.")
            filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
            allowed = {h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_FLETCHER32}
            if any(f not in allowed for f in filters):
                raise KerasFileError(f"{path}: weight {name!r} uses HDF5 filters {filters}; only deflate "
                                     f"(gzip), shuffle and fletcher32 are read (no filter plugins).")
            if obj.id.get_num_chunks() != expected:
                raise KerasFileError(unwritten.format(f"{obj.id.get_num_chunks()} of its {expected} chunks"))
            if not filters and stored != expected * dtype.itemsize * int(np.prod(chunk)):
                raise KerasFileError(unwritten.format(f"{stored} bytes"))


def _collect_vars(h5: _H5, group, where: str) -> list[WeightRef]:
    """Arrays of a Keras 3 layer group: ``vars/0, 1, …`` then sub-objects' (``cell/vars/…``) in order.

    Walked iteratively, depth first in sorted key order, at most :data:`MAX_GROUP_DEPTH` levels deep; an
    object met twice (a hard-link cycle) is refused.
    """
    h5py = h5.h5py
    out: list[WeightRef] = []
    visited: set = set()
    stack = [(group, where, 0)]
    while stack:
        g, label, depth = stack.pop()
        address = h5py.h5o.get_info(g.id).addr
        if address in visited:
            raise KerasFileError(f"{h5.path}: {label} is reached twice (an HDF5 hard-link cycle); Keras files "
                                 f"are trees. {_AGAIN}")
        visited.add(address)
        if depth > MAX_GROUP_DEPTH:
            raise KerasFileError(f"{h5.path}: {label} is nested more than {MAX_GROUP_DEPTH} groups deep; "
                                 "Keras nests two.")
        keys = list(g.keys())
        if len(keys) > MAX_H5_OBJECTS:
            raise KerasFileError(f"{h5.path}: {label} holds {len(keys)} objects.")
        if "vars" in keys:
            vars_group = h5.child(g, "vars", f"{label}/vars", "group")
            names = list(vars_group.keys())
            if not all(k.isdigit() and len(k) < 10 for k in names):
                raise KerasFileError(f"{h5.path}: {label}/vars must hold datasets named 0, 1, …. "
                                     f"Received {names[:20]}.")
            for k in sorted(names, key=int):
                obj = h5.child(vars_group, k, f"{label}/vars/{k}", "dataset")
                out.append(h5.dataset(obj, f"{label}/vars/{k}"))
        subgroups = []
        for key in sorted(keys):
            if key == "vars":
                continue
            obj = h5.child(g, key, f"{label}/{key}")
            if isinstance(obj, h5py.Group):
                subgroups.append((obj, f"{label}/{key}", depth + 1))
        stack.extend(reversed(subgroups))
    return out


# --- the two formats ---------------------------------------------------------------------------------


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, path: str, sink=None) -> bytes:
    """A zip member, refused if it declares more than ``cap`` bytes, read with that streaming cap."""
    if info.file_size > cap:
        raise KerasFileError(f"{path}: {info.filename} declares {info.file_size:,} bytes uncompressed; at most "
                             f"{cap:,} are read (for this member, from what the config needs; see docs/keras.md, "
                             "'Untrusted files').")
    if info.flag_bits & 0x1:
        raise KerasFileError(f"{path}: {info.filename} is encrypted; Keras never encrypts its archives.")
    parts, total = [], 0
    with archive.open(info) as member:
        while chunk := member.read(min(2**20, cap - total + 1)):
            total += len(chunk)
            if total > min(cap, info.file_size):
                raise KerasFileError(f"{path}: {info.filename} holds more than the {info.file_size:,} bytes it "
                                     f"declares (cap {cap:,}); the archive is damaged or hostile.")
            if sink is None:
                parts.append(chunk)
            else:
                sink.write(chunk)
    if total != info.file_size:
        raise KerasFileError(f"{path}: {info.filename} holds {total:,} bytes; it declares {info.file_size:,}.")
    return b"".join(parts)


_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, ValueError, KeyError,
               NotImplementedError, RuntimeError, struct.error, OverflowError)


def _open_archive(path: str) -> KerasFile:
    h5py = _h5py()
    try:
        archive = zipfile.ZipFile(path)
    except _ZIP_ERRORS as error:
        raise KerasFileError(f"{path}: not a readable .keras archive ({error}); is it truncated?") from None
    try:
        infos = archive.infolist()
        names = [i.filename for i in infos]
        for needed in ("config.json", "model.weights.h5"):
            if needed not in names:
                raise KerasFileError(f"{path}: a .keras archive must contain {needed!r}. "
                                     f"Found {sorted(set(names))[:20]}.")
        for name in ("config.json", "metadata.json", "model.weights.h5"):
            if names.count(name) > 1:
                raise KerasFileError(f"{path}: the archive holds {name!r} {names.count(name)} times.")
        by_name = {i.filename: i for i in infos}
        config = _parse_json(_read_member(archive, by_name["config.json"], MAX_CONFIG_BYTES, path),
                             "config.json", path)
        version = "3"
        if "metadata.json" in by_name and by_name["metadata.json"].file_size <= MAX_CONFIG_BYTES:
            meta = _parse_json(_read_member(archive, by_name["metadata.json"], MAX_CONFIG_BYTES, path),
                               "metadata.json", path)
            version = str(meta.get("keras_version", "3"))
    except KerasFileError:
        archive.close()
        raise
    except _ZIP_ERRORS as error:
        archive.close()
        raise KerasFileError(f"{path}: the .keras archive is damaged ({type(error).__name__}: {error}); "
                             "is it truncated?") from None

    state: dict = {}

    def open_weights(max_bytes: int) -> None:
        cap = min(int(max_bytes), MAX_WEIGHTS_BYTES)
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 (closed by close())
        state["spool"] = spool
        try:
            _read_member(archive, by_name["model.weights.h5"], cap, path, sink=spool)
        except KerasFileError:
            raise
        except _ZIP_ERRORS as error:
            raise KerasFileError(f"{path}: model.weights.h5 in the archive is damaged ({type(error).__name__}: "
                                 f"{error}); is it truncated?") from None
        finally:
            archive.close()
        size = spool.tell()
        _check_global_heaps(spool, size, f"{path} (model.weights.h5)")
        spool.seek(0)
        try:
            handle = h5py.File(spool, "r")
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise KerasFileError(f"{path}: model.weights.h5 is not a readable HDF5 file ({error}).") from None
        state["h5"] = handle
        h5 = _H5(h5py, handle, size, path, "model.weights.h5")
        state["walker"] = h5
        groups: dict[str, object] = {}
        layers_group = h5.child(handle, "layers", "layers", "group")
        if layers_group is not None:
            for key in layers_group:
                g = h5.child(layers_group, key, f"layers/{key}")
                if isinstance(g, h5py.Group):
                    vars_group = h5.child(g, "vars", f"layers/{key}/vars")
                    stored = None
                    if isinstance(vars_group, h5py.Group):
                        stored = h5.string_attr(vars_group, "name", f"layers/{key}/vars/@name")
                    groups[key] = (g, stored)
        state["groups"] = groups
        state["by_name"] = {name: key for key, (_, name) in groups.items() if name is not None}

    def weights(layer_name: str, class_name: str, index: int) -> list[WeightRef]:
        if "groups" not in state:
            raise KerasFileError(f"{path}: internal error: weights asked for before open_weights().")
        # The group's "name" attribute names the layer; files without it use Keras's path rule
        # (snake_case class name, made unique in layer order), which the caller passes as ``index``.
        groups = state["groups"]
        key = state["by_name"].get(layer_name)
        if key is None:
            snake = _snake_case(class_name)
            key = snake if index == 0 else f"{snake}_{index}"
        if key not in groups:
            return []
        return _collect_vars(state["walker"], groups[key][0], f"layers/{key}")

    def close() -> None:
        archive.close()
        if "h5" in state:
            state["h5"].close()
        if "spool" in state:
            state["spool"].close()

    return KerasFile(path, "keras", version, config, weights, close, open_weights)


def _open_h5(path: str) -> KerasFile:
    h5py = _h5py()
    try:
        with open(path, "rb") as raw:
            raw.seek(0, 2)
            size = raw.tell()
            _check_global_heaps(raw, size, path)
        handle = h5py.File(path, "r")
    except KerasFileError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise KerasFileError(f"{path}: not a readable HDF5 file ({error}); is it truncated?") from None
    h5 = _H5(h5py, handle, size, path, "the HDF5 file")
    try:
        text = h5.string_attr(handle, "model_config", "model_config")
        if text is None:
            raise KerasFileError(
                f"{path}: an .h5 Keras model needs a 'model_config' attribute (files written by "
                "model.save_weights() hold weights only and cannot be converted alone)."
            )
        if len(text) > MAX_CONFIG_BYTES:
            raise KerasFileError(f"{path}: model_config has {len(text)} characters; at most {MAX_CONFIG_BYTES}.")
        config = _parse_json(text, "model_config", path)
        version = h5.string_attr(handle, "keras_version", "keras_version") or "2"
        root = handle
        if handle.get("model_weights", getlink=True) is not None:
            root = h5.child(handle, "model_weights", "model_weights", "group")
    except KerasFileError:
        handle.close()
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as error:
        handle.close()
        raise KerasFileError(f"{path}: the HDF5 file is damaged ({error}); is it truncated?") from None

    def weights(layer_name: str, class_name: str, index: int) -> list[WeightRef]:
        # tf-keras names layers with "/" (MobileNetV3's "Conv/BatchNorm"); h5py then writes the layer's
        # group as nested groups (model_weights/Conv/BatchNorm), walked one checked hard link at a time.
        parts = layer_name.split("/")
        if any(not part or part in (".", "..") for part in parts):
            return []
        group = h5.walk(root, f"model_weights/{layer_name}", parts, "group")
        if group is None:
            return []
        if not isinstance(group, h5py.Group):
            raise KerasFileError(f"{path}: model_weights/{layer_name} must be an HDF5 group.")
        names = h5.string_attr(group, "weight_names", f"model_weights/{layer_name}/@weight_names", many=True) or []
        out = []
        for name in names:
            label = f"model_weights/{layer_name}/{name}"
            obj = h5.walk(group, name, name.split("/"), "dataset")
            if obj is None:
                raise KerasFileError(f"{path}: layer {layer_name!r} lists weight {name!r}, which is missing.")
            out.append(h5.dataset(obj, label))
        return out

    return KerasFile(path, "h5", version, config, weights, handle.close)


def open_keras_file(path: str | Path) -> KerasFile:
    """Open a ``.keras`` archive or a legacy ``.h5`` file (chosen by content, not by extension).

    Only the config is read here; call :meth:`KerasFile.open_weights` before asking for weights.

    Raises:
        KerasFileError: if the file is missing, truncated, or not a Keras model file.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as error:
        raise KerasFileError(f"Cannot open Keras file {path!r}: {error.strerror or error}.") from None
    if head.startswith(b"PK"):
        return _open_archive(path)
    if head.startswith(_HDF5_SIGNATURE):
        return _open_h5(path)
    raise KerasFileError(
        f"{path}: not a Keras model file. Expected a .keras archive (zip) or a legacy .h5 (HDF5) file; "
        f"the file starts with {head!r}."
    )
