"""``.lmn`` files: the writer and reader of ``export/FORMAT.md``.

:func:`write` lays out a :class:`~lumijax.peg.PEG` as preamble, msgpack
header and 64-byte-aligned data; the same graph always gives the same
bytes. :func:`read` checks a file in the order the format prescribes —
preamble, header size, header structure and caps, tensor table (dtypes,
sizes, bounds, alignment, overlap), checksum, values (finite floats, codes
in range) and graph (ops, arity, params, attributes, definition before use)
— and raises :class:`LmnError` naming what is wrong and where, before it
allocates anything a file merely claims.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from lumijax import hardware as hw
from lumijax import peg

MAGIC = b"LMN\0"
MAJOR, MINOR = 2, 0
PREAMBLE = struct.Struct("<4sHHQ")
MAX_HEADER_LEN = 16 * 1024 * 1024
ALIGN = 64
MAX_TENSORS = MAX_NODES = MAX_VALUES = 65536
MAX_PORTS, MAX_RANK, MAX_NAME, MAX_ATTRS = 16, 8, 256, 64
ELEMENT_SIZE = {"f32": 4, "i32": 4, "i8": 1, "u8": 1}
NUMPY = {"f32": "<f4", "i32": "<i4", "i8": "i1", "u8": "u1"}
VALUE_DTYPES = ("f32", "i32")

# op: (inputs, required params, optional params, required attrs)
OPS: dict[str, tuple[int, tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "transpose": (1, (), (), ("perm",)),
    "reshape": (1, (), (), ("shape",)),
    "linear": (1, ("weight",), ("bias",), ("core",)),
    "conv2d": (1, ("weight",), ("bias",), ("kernel", "stride", "padding", "core")),
    "scale_shift": (1, ("scale", "shift"), (), ()),
    "relu": (1, (), (), ()),
    "gelu": (1, (), (), ("approximate",)),
    "add": (2, (), (), ()),
    "max_pool2d": (1, (), (), ("window", "stride", "padding")),
    "global_avg_pool": (1, (), (), ()),
    "embedding": (1, ("table",), (), ()),
    "add_positions": (1, ("table",), (), ()),
    "layer_norm": (1, ("scale",), ("bias",), ("eps",)),
    "causal_attention": (1, (), (), ("heads", "scale", "core")),
}


class LmnError(ValueError):
    """A file that is not a valid ``.lmn``: the message says what and where."""


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


# -- writing --------------------------------------------------------------------


def _tensor_entry(tensor: peg.Tensor, offset: int) -> dict:
    entry = {"name": tensor.name, "dtype": peg.DTYPES[tensor.array.dtype], "shape": list(tensor.array.shape),
             "offset": offset, "nbytes": int(tensor.array.nbytes)}
    if tensor.quant is not None:
        entry["quant"] = {k: tensor.quant[k] for k in ("bits", "scale", "zero_point", "lut")}
    return entry


def encode(graph: peg.PEG, producer: str = "lumijax") -> bytes:
    """The bytes of the ``.lmn`` file of ``graph``."""
    entries, blobs, offset = [], [], 0
    for tensor in graph.tensors.values():
        offset = _align(offset)
        entries.append(_tensor_entry(tensor, offset))
        data = tensor.array.astype(tensor.array.dtype.newbyteorder("<"), copy=False).tobytes()
        blobs.append((offset, data))
        offset += len(data)
    data = bytearray(_align(offset) if offset else 0)
    for start, blob in blobs:
        data[start:start + len(blob)] = blob
    header = {
        "format": "lmn",
        "producer": producer,
        "graph": {
            "inputs": list(graph.inputs),
            "outputs": list(graph.outputs),
            "values": [{"name": v.name, "dtype": v.dtype, "shape": list(v.shape)} for v in graph.values.values()],
            "nodes": [{"name": n.name, "op": n.op, "inputs": list(n.inputs), "outputs": list(n.outputs),
                       "params": dict(n.params), "attrs": dict(n.attrs)} for n in graph.nodes],
        },
        "tensors": entries,
        "hardware": graph.hardware.to_dict(),
        "wdm": graph.wdm,
        "metadata": dict(graph.metadata),
        "checksum": {"algorithm": "crc32", "value": zlib.crc32(data)},
    }
    blob = msgpack.packb(header, use_bin_type=True)
    padding = _align(PREAMBLE.size + len(blob)) - PREAMBLE.size - len(blob)
    return PREAMBLE.pack(MAGIC, MAJOR, MINOR, len(blob)) + blob + bytes(padding) + bytes(data)


def write(graph: peg.PEG, path: str | Path) -> Path:
    """Writes ``graph`` to ``path``; returns the path."""
    from lumijax import __version__

    path = Path(path)
    path.write_bytes(encode(graph, producer=f"lumijax {__version__}"))
    return path


# -- reading --------------------------------------------------------------------


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise LmnError(message)


def _name(value: Any, where: str) -> str:
    _expect(isinstance(value, str) and 0 < len(value.encode()) <= MAX_NAME, f"{where}: a name must be a string of 1..{MAX_NAME} bytes, got {value!r:.80}")
    return value


def _list(value: Any, where: str, cap: int) -> list:
    _expect(isinstance(value, list), f"{where} must be an array")
    _expect(len(value) <= cap, f"{where} has {len(value)} entries, more than the cap of {cap}")
    return value


def _map(value: Any, where: str) -> dict:
    _expect(isinstance(value, dict), f"{where} must be a map")
    return value


def _shape(value: Any, where: str) -> tuple[int, ...]:
    dims = _list(value, f"{where}.shape", MAX_RANK)
    _expect(all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in dims), f"{where}.shape must hold non-negative integers")
    return tuple(dims)


def _preamble(blob: bytes) -> tuple[int, int]:
    _expect(len(blob) >= PREAMBLE.size, f"file truncated: the preamble needs {PREAMBLE.size} bytes but the file has {len(blob)}")
    magic, major, minor, header_len = PREAMBLE.unpack_from(blob)
    _expect(magic == MAGIC, f"not an .lmn file: magic bytes are {magic.hex(' ')}, expected 4c 4d 4e 00")
    _expect(major == MAJOR, f"unsupported .lmn format version {major}.{minor}: this reader implements major version {MAJOR}")
    _expect(0 < header_len <= MAX_HEADER_LEN, f"header_len {header_len} at offset 8 is out of range: must be 1..={MAX_HEADER_LEN} bytes")
    _expect(len(blob) >= PREAMBLE.size + header_len, f"file truncated: the header needs {PREAMBLE.size + header_len} bytes but the file has {len(blob)}")
    return header_len, _align(PREAMBLE.size + header_len)


def _header(raw: bytes) -> dict:
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_str_len=MAX_HEADER_LEN, max_bin_len=0,
                                 max_array_len=4 * MAX_NODES, max_map_len=4 * MAX_NODES, max_ext_len=0)
    except (msgpack.ExtraData, ValueError, msgpack.UnpackException, RecursionError) as err:
        raise LmnError(f"header is not one msgpack value ({type(err).__name__}: {err})") from None
    header = _map(header, "header")
    _expect(header.get("format") == "lmn", f"header.format is {header.get('format')!r}, expected 'lmn'")
    return header


def _tensors(header: dict, data_len: int) -> dict[str, dict]:
    entries = _list(header.get("tensors"), "header.tensors", MAX_TENSORS)
    tensors, spans = {}, []
    for i, entry in enumerate(entries):
        where = f"tensors[{i}]"
        entry = _map(entry, where)
        name = _name(entry.get("name"), f"{where}.name")
        where = f"tensor {name!r}"
        _expect(name not in tensors, f"{where} is defined twice")
        dtype = entry.get("dtype")
        _expect(dtype in ELEMENT_SIZE, f"{where}: dtype {dtype!r} is not one of {sorted(ELEMENT_SIZE)}")
        shape = _shape(entry.get("shape"), where)
        offset, nbytes = entry.get("offset"), entry.get("nbytes")
        _expect(isinstance(offset, int) and isinstance(nbytes, int) and offset >= 0 and nbytes >= 0, f"{where}: offset and nbytes must be non-negative integers")
        expected = ELEMENT_SIZE[dtype]
        for d in shape:
            expected *= d
        _expect(expected < 2**64, f"{where}: the size of shape {list(shape)} overflows")
        _expect(expected == nbytes, f"{where}: nbytes {nbytes} but shape {list(shape)} of {dtype} needs {expected}")
        _expect(offset % ALIGN == 0, f"{where}: offset {offset} is not a multiple of {ALIGN}")
        _expect(offset + nbytes <= data_len, f"{where}: bytes {offset}..{offset + nbytes} lie outside the data section of {data_len} bytes")
        spans.append((offset, offset + nbytes, name))
        tensors[name] = {"dtype": dtype, "shape": shape, "offset": offset, "nbytes": nbytes, "quant": entry.get("quant")}
    spans.sort()
    for (a0, a1, a), (b0, b1, b) in zip(spans, spans[1:]):
        _expect(a1 <= b0 or a0 == a1 or b0 == b1, f"tensors {a!r} and {b!r} overlap (bytes {a0}..{a1} and {b0}..{b1})")
    return tensors


def _arrays(tensors: dict[str, dict], data: memoryview) -> dict[str, np.ndarray]:
    arrays = {}
    for name, t in tensors.items():
        array = np.frombuffer(data, NUMPY[t["dtype"]], count=t["nbytes"] // ELEMENT_SIZE[t["dtype"]], offset=t["offset"]).reshape(t["shape"])
        if t["dtype"] == "f32":
            _expect(bool(np.all(np.isfinite(array))), f"tensor {name!r} holds NaN or infinite values")
        arrays[name] = array
    for name, t in tensors.items():
        q = t["quant"]
        if q is None:
            continue
        where = f"tensor {name!r}.quant"
        q = _map(q, where)
        bits = q.get("bits")
        _expect(t["dtype"] == "i8" and isinstance(bits, int) and 1 <= bits <= 8, f"{where}: codes must be i8 with 1..8 bits")
        rows = t["shape"][0] if t["shape"] else 1
        for role, dtype in (("scale", "f32"), ("zero_point", "i32")):
            ref = q.get(role)
            _expect(ref in tensors and tensors[ref]["dtype"] == dtype and tensors[ref]["shape"] == (rows,), f"{where}.{role} must name a {dtype} tensor of shape ({rows},)")
        _expect(bool(np.all(arrays[q["scale"]] > 0)), f"{where}: scales must be > 0")
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        codes = arrays[name]
        _expect(codes.size == 0 or (int(codes.min()) >= lo and int(codes.max()) <= hi), f"{where}: codes outside [{lo}, {hi}]")
        lut = q.get("lut")
        _expect(lut is None or (lut in tensors and tensors[lut]["dtype"] == "f32" and tensors[lut]["shape"] == (1 << bits,)), f"{where}.lut must be nil or an f32 tensor of {1 << bits} entries")
    return arrays


def _graph(header: dict, tensors: dict[str, dict]) -> None:
    graph = _map(header.get("graph"), "header.graph")
    values = {}
    for i, v in enumerate(_list(graph.get("values"), "graph.values", MAX_VALUES)):
        v = _map(v, f"graph.values[{i}]")
        name = _name(v.get("name"), f"graph.values[{i}].name")
        _expect(name not in values, f"value {name!r} is declared twice")
        _expect(v.get("dtype") in VALUE_DTYPES, f"value {name!r}: dtype {v.get('dtype')!r} is not one of {VALUE_DTYPES}")
        values[name] = _shape(v.get("shape"), f"value {name!r}")
    defined = set()
    for name in _list(graph.get("inputs"), "graph.inputs", MAX_PORTS):
        _expect(name in values, f"graph input {name!r} is not a declared value")
        defined.add(name)
    for i, node in enumerate(_list(graph.get("nodes"), "graph.nodes", MAX_NODES)):
        node = _map(node, f"graph.nodes[{i}]")
        name = _name(node.get("name"), f"graph.nodes[{i}].name")
        where = f"node {i} ({name!r})"
        op = node.get("op")
        _expect(op in OPS, f"{where}: unknown op {op!r}")
        arity, required, optional, attrs_needed = OPS[op]
        inputs = _list(node.get("inputs"), f"{where}.inputs", MAX_PORTS)
        outputs = _list(node.get("outputs"), f"{where}.outputs", MAX_PORTS)
        _expect(len(inputs) == arity and len(outputs) == 1, f"{where}: {op} takes {arity} inputs and gives 1 output, got {len(inputs)} and {len(outputs)}")
        for value in inputs:
            _expect(value in defined, f"{where}: input {value!r} is not defined before use")
        params = _map(node.get("params"), f"{where}.params")
        for role in required:
            _expect(role in params, f"{where}: {op} needs param {role!r}")
        for role, ref in params.items():
            _expect(role in required + optional, f"{where}: {op} has no param {role!r}")
            _expect(ref in tensors, f"{where}: param {role!r} names tensor {ref!r}, which the file does not hold")
            _expect(tensors[ref]["dtype"] == "f32" or (role == "weight" and tensors[ref]["quant"] is not None),
                    f"{where}: param {role!r} ({ref!r}) must be f32, or i8 codes with quant (codes without quant cannot be read)")
        attrs = _map(node.get("attrs"), f"{where}.attrs")
        _expect(len(attrs) <= MAX_ATTRS, f"{where}: more than {MAX_ATTRS} attributes")
        for attr in attrs_needed:
            _expect(attr in attrs, f"{where}: {op} needs attribute {attr!r}")
        for value in outputs:
            _expect(value in values, f"{where}: output {value!r} is not a declared value")
            _expect(value not in defined, f"{where}: value {value!r} is produced twice")
            defined.add(value)
    for name in _list(graph.get("outputs"), "graph.outputs", MAX_PORTS):
        _expect(name in defined, f"graph output {name!r} is never produced")


def decode(blob: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """The header and the tensors (read-only views of ``blob``) of a file."""
    header_len, data_offset = _preamble(blob)
    header = _header(blob[PREAMBLE.size:PREAMBLE.size + header_len])
    tensors = _tensors(header, max(len(blob) - data_offset, 0))
    _expect(not tensors or len(blob) >= data_offset, f"file truncated: the data section starts at {data_offset} but the file has {len(blob)} bytes")
    data = memoryview(blob)[data_offset:] if len(blob) > data_offset else memoryview(b"")
    checksum = _map(header.get("checksum"), "header.checksum")
    _expect(checksum.get("algorithm") == "crc32", f"checksum algorithm {checksum.get('algorithm')!r} is not 'crc32'")
    _expect(zlib.crc32(data) == checksum.get("value"), "checksum mismatch: the data section is corrupt")
    arrays = _arrays(tensors, data)
    _graph(header, tensors)
    hardware = _map(header.get("hardware"), "header.hardware")
    try:
        hw.HardwareConfig(**{k: v for k, v in hardware.items() if k in hw.HardwareConfig.__dataclass_fields__})
    except (TypeError, ValueError) as err:
        raise LmnError(f"header.hardware is not a valid hardware model: {err}") from None
    return header, arrays


def read(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Validates and reads an ``.lmn`` file: its header and its tensors."""
    return decode(Path(path).read_bytes())
