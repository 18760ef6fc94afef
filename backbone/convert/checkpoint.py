"""Exact-resume checkpoints for the converter: trainable tensors, optimizer state and progress.

Written to a temporary folder and renamed into place, so a run killed mid-write leaves the previous
checkpoint intact. Tensors are safetensors; the optimizer state goes through `torch.save` and is loaded
with `weights_only=True`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


@dataclass
class Progress:
    """Where a stage stands; `step` is also the data position (batches are a function of the step)."""

    stage: str
    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(folder: Path, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None,
                    progress: Progress) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in params.items()}, tmp / "params.safetensors")
    if optimizer is not None:
        names = _optimizer_order(optimizer, params)
        torch.save({"optimizer": optimizer.state_dict(), "names": names, "rng": torch.get_rng_state()},
                   tmp / "optimizer.pt")
    (tmp / "progress.json").write_text(json.dumps(asdict(progress), indent=1))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, Progress]:
    """Read a checkpoint; falls back to the `.old` copy if a crash hit between the two renames."""
    folder = _intact(folder)
    params = load_file(folder / "params.safetensors")
    opt_path = folder / "optimizer.pt"
    # the moments come to the CPU whatever device wrote them; the optimizer moves them to its parameters'
    opt = torch.load(opt_path, map_location="cpu", weights_only=True) if opt_path.exists() else None
    return params, opt, read_progress(folder)


def moments_by_name(opt_state: dict[str, Any], params_order: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """The optimizer's per-parameter state keyed by parameter name. Checkpoints written before names were
    recorded hold one parameter group in `params_order` (the order of the trainable parameters)."""
    names = opt_state.get("names", params_order)
    return {names[int(index)]: moments for index, moments in opt_state["optimizer"]["state"].items()}


def restore_moments(optimizer: torch.optim.Optimizer, params: dict[str, torch.Tensor],
                    moments: dict[str, dict[str, torch.Tensor]]) -> None:
    """Load per-parameter state by name, whatever the parameter groups were when it was saved; the groups'
    own settings (learning rates, scales) stay the optimizer's."""
    state = optimizer.state_dict()
    state["state"] = {index: moments[name] for index, name in enumerate(_optimizer_order(optimizer, params))
                      if name in moments}
    optimizer.load_state_dict(state)


def _optimizer_order(optimizer: torch.optim.Optimizer, params: dict[str, torch.Tensor]) -> list[str]:
    """Parameter names in the order the optimizer's state dict numbers them (group by group)."""
    name_of = {id(param): name for name, param in params.items()}
    return [name_of[id(param)] for group in optimizer.param_groups for param in group["params"]]


def has_checkpoint(folder: Path) -> bool:
    return (_intact(folder) / "progress.json").exists()


def read_progress(folder: Path) -> Progress:
    """Only the progress record (cheap: no tensors are read)."""
    return Progress(**json.loads((_intact(folder) / "progress.json").read_text()))


def _intact(folder: Path) -> Path:
    old = folder.with_name(folder.name + ".old")
    return old if not (folder / "progress.json").exists() and (old / "progress.json").exists() else folder
