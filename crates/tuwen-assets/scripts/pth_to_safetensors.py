#!/usr/bin/env python3
"""Convert a PyTorch LEGACY (pre-1.6, non-zip) `.pth` state dict to safetensors, without torch.

Usage: pth_to_safetensors.py IN.pth OUT.safetensors

Only the standard library is used. The unpickler refuses every global except the handful a plain
state dict needs (OrderedDict, torch._utils._rebuild_tensor_v2, torch.*Storage), so a malicious
pickle cannot run code. The output is deterministic (keys sorted, no metadata), so its sha256 can
be pinned. Written by hand because no registry package converts legacy .pth without torch.
"""
import collections
import json
import pickle
import struct
import sys

MAGIC = 0x1950A86A20F9469CFC6C
# storage class -> (safetensors dtype, element size, struct code)
STORAGES = {
    "FloatStorage": ("F32", 4, "f"),
    "DoubleStorage": ("F64", 8, "d"),
    "HalfStorage": ("F16", 2, "e"),
    "LongStorage": ("I64", 8, "q"),
    "IntStorage": ("I32", 4, "i"),
    "ShortStorage": ("I16", 2, "h"),
    "CharStorage": ("I8", 1, "b"),
    "ByteStorage": ("U8", 1, "B"),
    "BoolStorage": ("BOOL", 1, "?"),
}


class StorageType:
    def __init__(self, name):
        self.name = name


class Storage:
    def __init__(self, kind, numel):
        self.kind = kind
        self.numel = numel
        self.data = None


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *rest):
    return Tensor(storage, offset, size, stride)


class SafeUnpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor_v2
        if module == "torch" and name in STORAGES:
            return StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not isinstance(pid, tuple) or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, kind, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if key not in self.storages:
            self.storages[key] = Storage(kind.name, numel)
        return self.storages[key]


def contiguous_bytes(t):
    dtype, esize, code = STORAGES[t.storage.kind]
    numel = 1
    for s in t.size:
        numel *= s
    expected, acc = [], 1
    for s in reversed(t.size):
        expected.insert(0, acc)
        acc *= s
    raw = t.storage.data
    if numel == 0:
        return dtype, b""
    if list(t.stride) == expected or numel == 1:
        start = t.offset * esize
        return dtype, raw[start : start + numel * esize]
    # Strided tensor: gather element by element (rare in state dicts).
    out = bytearray()
    index = [0] * len(t.size)
    for _ in range(numel):
        pos = t.offset + sum(i * s for i, s in zip(index, t.stride))
        out += raw[pos * esize : (pos + 1) * esize]
        for d in reversed(range(len(index))):
            index[d] += 1
            if index[d] < t.size[d]:
                break
            index[d] = 0
    return dtype, bytes(out)


def convert(src, dst):
    with open(src, "rb") as f:
        if f.read(2) == b"PK":
            raise SystemExit(f"{src}: zip-format checkpoint; this converter handles only the legacy format")
        f.seek(0)
        plain = pickle.Unpickler  # the three header records hold only ints and dicts
        if plain(f).load() != MAGIC:
            raise SystemExit(f"{src}: not a legacy PyTorch file (bad magic number)")
        if plain(f).load() != 1001:
            raise SystemExit(f"{src}: unsupported legacy protocol version")
        sys_info = plain(f).load()
        if not sys_info.get("little_endian", True):
            raise SystemExit(f"{src}: big-endian checkpoints are not supported")
        storages = {}
        state = SafeUnpickler(f, storages).load()
        keys = plain(f).load()
        for key in keys:
            st = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            esize = STORAGES[st.kind][1]
            st.data = f.read(numel * esize)
            if len(st.data) != numel * esize:
                raise SystemExit(f"{src}: truncated storage {key}")
    if not isinstance(state, dict):
        raise SystemExit(f"{src}: expected a state dict, found {type(state).__name__}")

    header, chunks, offset = {}, [], 0
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, Tensor):
            raise SystemExit(f"{src}: entry {name} is not a tensor")
        dtype, data = contiguous_bytes(t)
        header[name] = {"dtype": dtype, "shape": list(t.size), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    blob = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    blob += b" " * ((8 - len(blob) % 8) % 8)
    tmp = dst + ".tmp"
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for c in chunks:
            out.write(c)
    import os

    os.replace(tmp, dst)
    print(f"converted {len(header)} tensors: {src} -> {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    convert(sys.argv[1], sys.argv[2])
