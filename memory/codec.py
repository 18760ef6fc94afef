"""Snapshot codec: a model state's tensors <-> one checksummed blob plus a JSON manifest.

The blob is safetensors bytes, optionally zstandard-compressed, with floating tensors optionally stored
as bfloat16 (half the bytes, no longer bit-exact). The manifest (tensor names, shapes, dtypes, the
state's metadata) travels inside the safetensors header too, so the checksummed blob describes itself and
the manifest column can be cross-checked against it. Every layout has a format version; decoders of old
versions stay here so old snapshots keep loading.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import safetensors.torch
import torch
import zstandard

from memory.errors import SnapshotError

FORMAT_VERSION = 1
MANIFEST_KEY = "rillet.manifest"


@dataclass(frozen=True)
class CodecOptions:
    """How new snapshots are written; reading accepts any combination."""

    compress: bool = False
    bfloat16: bool = False
    zstd_level: int = 3


@dataclass(frozen=True)
class EncodedState:
    """What a `StateSnapshot` row stores besides its keys."""

    blob: bytes
    manifest: dict[str, Any]
    checksum: str
    codec: str
    dtype: str
    byte_size: int
    format_version: int = FORMAT_VERSION


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def encode_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                 options: CodecOptions = CodecOptions(), *, model: str | None = None) -> EncodedState:
    """Serialize a state's `to_tensors()` and `metadata()` into a blob; `model` (its fingerprint) is recorded
    inside, so a row relabelled with another model's fingerprint is caught on reading."""
    stored, entries = {}, {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        kept = tensor.to(torch.bfloat16) if options.bfloat16 and tensor.is_floating_point() else tensor
        stored[name] = kept
        entries[name] = {"shape": list(tensor.shape), "dtype": _dtype_name(tensor.dtype),
                         "stored": _dtype_name(kept.dtype)}
    manifest = {"format_version": FORMAT_VERSION, "tensors": entries, "metadata": dict(metadata)}
    if model is not None:
        manifest["model"] = model
    blob = safetensors.torch.save(stored, metadata={MANIFEST_KEY: json.dumps(manifest, sort_keys=True)})
    codec = "safetensors"
    if options.compress:
        blob = zstandard.ZstdCompressor(level=options.zstd_level).compress(blob)
        codec = "safetensors+zstd"
    return EncodedState(blob=blob, manifest=manifest, checksum=sha256(blob), codec=codec,
                        dtype="bfloat16" if options.bfloat16 else "native", byte_size=len(blob))


def decode_state(blob: bytes, *, checksum: str, codec: str, format_version: int,
                 manifest: dict[str, Any] | None = None, model: str | None = None,
                 byte_size: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Verify and deserialize a blob into (tensors, metadata); `SnapshotError` if anything is off, whatever
    the stored values are (a damaged row may hold text where bytes belong, or numbers where text does)."""
    decoder = _DECODERS.get(format_version) if isinstance(format_version, int) else None
    if decoder is None:
        raise SnapshotError(f"snapshot format {format_version!r} is not known to this version of Rillet "
                            f"(it reads {sorted(_DECODERS)})")
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise SnapshotError(f"the stored state is {type(blob).__name__}, not bytes")
    blob = bytes(blob)
    if byte_size is not None and byte_size != len(blob):
        raise SnapshotError(f"the stored state has {len(blob):,} bytes, not the {byte_size!r} recorded")
    if not isinstance(checksum, str) or sha256(blob) != checksum:
        raise SnapshotError("checksum mismatch: the stored state is damaged or truncated")
    if not isinstance(codec, str):
        raise SnapshotError(f"unknown snapshot codec {codec!r}")
    tensors, metadata, recorded = decoder(blob, codec, manifest)
    if model is not None and recorded is not None and recorded != model:
        raise SnapshotError("the stored state was made by another model than its row says")
    return tensors, metadata


def _decode_v1(blob: bytes, codec: str, manifest: dict[str, Any] | None
               ) -> tuple[dict[str, torch.Tensor], dict[str, str], str | None]:
    if codec == "safetensors+zstd":
        try:
            blob = zstandard.ZstdDecompressor().decompress(blob)
        except zstandard.ZstdError as exc:
            raise SnapshotError(f"compressed state cannot be read: {exc}") from exc
    elif codec != "safetensors":
        raise SnapshotError(f"unknown snapshot codec {codec!r}")
    try:
        tensors = safetensors.torch.load(blob)
        header = json.loads(_safetensors_metadata(blob)[MANIFEST_KEY])
    except Exception as exc:  # safetensors raises several types for damaged bytes
        raise SnapshotError(f"state bytes cannot be parsed: {exc}") from exc
    if manifest is not None and manifest != header:
        raise SnapshotError("the manifest stored beside the state does not match the state itself")
    try:
        entries = header["tensors"]
        if set(entries) != set(tensors):
            raise SnapshotError("the state's tensors do not match its manifest")
        restored = {}
        for name, entry in entries.items():
            tensor = tensors[name]
            if list(tensor.shape) != entry["shape"] or _dtype_name(tensor.dtype) != entry["stored"]:
                raise SnapshotError(f"tensor {name!r} does not match its manifest")
            dtype = getattr(torch, entry["dtype"])
            if not isinstance(dtype, torch.dtype):
                raise SnapshotError(f"tensor {name!r} has an unknown type {entry['dtype']!r}")
            restored[name] = tensor.to(dtype)
        metadata = header["metadata"]
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise SnapshotError("the state's metadata is not a table of strings")
        recorded = header.get("model")
    except (KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"the state's manifest is malformed ({type(exc).__name__}: {exc})") from exc
    return restored, metadata, recorded


def _safetensors_metadata(blob: bytes) -> dict[str, str]:
    header_len = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + header_len])["__metadata__"]


_DECODERS = {1: _decode_v1}
