"""The snapshot codec: exact round trips, bfloat16 storage, and every kind of damage detected."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from memory.codec import FORMAT_VERSION, CodecOptions, decode_state, encode_state, sha256
from memory.errors import SnapshotError

OPTIONS = [CodecOptions(), CodecOptions(compress=True)]


def random_tensors(seed: int, tokens: int) -> dict[str, torch.Tensor]:
    """Awkward shapes and dtypes, including empty and one-token tensors."""
    g = torch.Generator().manual_seed(seed)
    return {
        "layers.0.keys": torch.randn(1, 3, tokens, 64, generator=g),
        "layers.0.values": torch.randn(1, 3, tokens, 63, generator=g).to(torch.float16),
        "kv": torch.randn(2, 5, 7, generator=g, dtype=torch.float64),
        "positions": torch.randint(0, 10_000, (tokens,), generator=g),
        "special": torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 1e-45]),
    }


def decode(encoded, **overrides):
    blob = overrides.pop("blob", encoded.blob)
    fields = {"checksum": encoded.checksum, "codec": encoded.codec, "format_version": encoded.format_version,
              "manifest": encoded.manifest} | overrides
    return decode_state(blob, **fields)


@pytest.mark.parametrize("options", OPTIONS, ids=["raw", "zstd"])
@pytest.mark.parametrize("tokens", [0, 1, 63, 500])
def test_round_trip_is_bit_identical(options: CodecOptions, tokens: int) -> None:
    tensors = random_tensors(tokens, tokens)
    metadata = {"kind": "test", "num_tokens": str(tokens), "note": "ünïcode ✓"}
    encoded = encode_state(tensors, metadata, options)
    assert encoded.byte_size == len(encoded.blob) and encoded.checksum == sha256(encoded.blob)
    restored, restored_metadata = decode(encoded)
    assert restored_metadata == metadata
    assert restored.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert restored[name].dtype == tensor.dtype and restored[name].shape == tensor.shape
        # Compare raw bytes: NaN payloads and -0.0 must survive too.
        assert restored[name].contiguous().view(torch.uint8).equal(tensor.contiguous().view(torch.uint8)), name


@pytest.mark.parametrize("compress", [False, True])
def test_bfloat16_storage_rounds_floats_once_and_keeps_integers(compress: bool) -> None:
    tensors = random_tensors(7, 63)
    encoded = encode_state(tensors, {}, CodecOptions(compress=compress, bfloat16=True))
    assert encoded.dtype == "bfloat16"
    restored, _ = decode(encoded)
    for name, tensor in tensors.items():
        assert restored[name].dtype == tensor.dtype
        if tensor.is_floating_point():
            # Reference: round-to-nearest-even onto bfloat16's 8-bit mantissa, done in float64.
            ref = tensor.double()
            finite = ref.isfinite() & (ref != 0)
            exponent = torch.floor(torch.log2(ref.abs().where(finite, torch.ones_like(ref))))
            ulp = torch.pow(2.0, exponent - 7)
            ref = torch.where(finite, torch.round(ref / ulp) * ulp, ref)
            normal = finite & (ref.abs() > 1e-37)  # subnormals of bfloat16 follow other rules
            assert torch.equal(restored[name].double()[normal], ref[normal]), name
            assert torch.equal(restored[name].isnan(), tensor.isnan())
        else:
            assert torch.equal(restored[name], tensor)
    raw = encode_state(tensors, {}, CodecOptions(compress=compress))
    assert encoded.byte_size < 0.75 * raw.byte_size


@pytest.mark.parametrize("options", OPTIONS, ids=["raw", "zstd"])
def test_flipped_byte_truncation_and_wrong_checksum_are_detected(options: CodecOptions) -> None:
    encoded = encode_state(random_tensors(1, 63), {"kind": "test"}, options)
    flipped = bytearray(encoded.blob)
    flipped[len(flipped) // 2] ^= 0x01
    with pytest.raises(SnapshotError, match="checksum"):
        decode(encoded, blob=bytes(flipped))
    with pytest.raises(SnapshotError, match="checksum"):
        decode(encoded, blob=encoded.blob[: len(encoded.blob) // 3])
    with pytest.raises(SnapshotError, match="checksum"):
        decode(encoded, checksum="0" * 64)


@pytest.mark.parametrize("options", OPTIONS, ids=["raw", "zstd"])
def test_damage_behind_a_matching_checksum_is_still_an_error_not_a_crash(options: CodecOptions) -> None:
    """A blob damaged before its checksum was taken (or a forged checksum) must not parse into garbage."""
    encoded = encode_state(random_tensors(2, 63), {"kind": "test"}, options)
    for damaged in (encoded.blob[:40], b"\x00" * 100, encoded.blob[:-10]):
        with pytest.raises(SnapshotError):
            decode(encoded, blob=damaged, checksum=sha256(damaged))


def test_manifest_must_match_the_blob_and_format_must_be_known() -> None:
    encoded = encode_state(random_tensors(3, 1), {"kind": "test"})
    other = dataclasses.replace(encoded, manifest={**encoded.manifest, "metadata": {"kind": "forged"}})
    with pytest.raises(SnapshotError, match="manifest"):
        decode(encoded, manifest=other.manifest)
    with pytest.raises(SnapshotError, match="format"):
        decode(encoded, format_version=FORMAT_VERSION + 1)
    with pytest.raises(SnapshotError, match="codec"):
        decode(encoded, codec="pickle")
