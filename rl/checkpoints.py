"""Resumable training: only checkpoints that were written to the end are ever resumed from.

The HF Trainer writes `checkpoint-N/` file by file; a SIGKILL can leave half of one. A callback
drops a COMPLETE marker once the Trainer has finished saving (after fsyncing every file of the
checkpoint, then the marker, then the folder, so the marker can never reach the disk before the
data it vouches for), and resume picks the newest marked checkpoint, deleting unmarked leftovers.

Under FSDP or ZeRO-3 a stage's final checkpoint is gathered to the whole model first (gather_for_save).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback

from reasoner.errors import ReasonerError
from reasoner.rl.lora import merged

MARKER = "COMPLETE"
# Every file's size and SHA-256, written before the marker (trainer checkpoints) or before the rename into place
# (save_checkpoint), so a checkpoint can prove it is whole: a truncated, overwritten or bit-flipped file is named
# at load instead of failing deep inside a loader, or worse, loading as garbage weights.
MANIFEST = "MANIFEST.json"
# A LoRA checkpoint-N holds only the adapters, but two other things train: the balancer moves the routers'
# e_score_correction_bias buffers, and MTP layers attached after the adapters train in full. Both are saved
# beside it, so a resume loses neither.
ROUTER_BIASES = "router_biases.safetensors"
OUTSIDE_ADAPTERS = "trained_outside_adapters.safetensors"
SKIP_CHECKSUMS_ENV = "REASONER_SKIP_CHECKSUMS"  # =1: check only that files exist with the recorded sizes
_CHUNK = 8 << 20


class CheckpointDamaged(ReasonerError):
    """A checkpoint file is missing, truncated or changed since its manifest was written."""


def skip_checksums() -> bool:
    return os.environ.get(SKIP_CHECKSUMS_ENV, "").strip().lower() not in ("", "0", "false", "no")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):  # hashlib releases the GIL on large blocks: threads hash in parallel
            digest.update(block)
    return digest.hexdigest()


def _manifest_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, MARKER))


def _threads(count: int) -> int:
    return max(1, min(count, 4, os.cpu_count() or 1))


def write_manifest(folder: str | Path) -> Path:
    """MANIFEST.json: {"files": {relative path: {"size", "sha256"}}} for every file in the folder, fsynced."""
    folder = Path(folder)
    files = _manifest_files(folder)
    with ThreadPoolExecutor(_threads(len(files))) as pool:
        digests = list(pool.map(sha256_file, files))
    entries = {f.relative_to(folder).as_posix(): {"size": f.stat().st_size, "sha256": d}
               for f, d in zip(files, digests)}
    target = folder / MANIFEST
    with open(target, "w") as handle:
        json.dump({"format": 1, "algorithm": "sha256", "files": entries}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    return target


def verify_manifest(folder: str | Path, *, checksums: bool | None = None) -> bool:
    """Check every file against MANIFEST.json: False when there is no manifest (an older checkpoint, a hub
    download), True when all match; otherwise one CheckpointDamaged naming the damaged files.
    checksums=False (or REASONER_SKIP_CHECKSUMS=1) checks presence and sizes only: for huge checkpoints."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    if checksums is None:
        checksums = not skip_checksums()
    try:
        entries = json.loads(manifest.read_bytes().decode("utf-8"))["files"]
        expected = {str(name): (int(e["size"]), str(e["sha256"])) for name, e in entries.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointDamaged(f"{folder}: checkpoint damaged: {MANIFEST} is unreadable ({type(err).__name__}); "
                                f"remove it to load the checkpoint unchecked") from None
    damaged: list[str] = []
    to_hash: list[tuple[str, Path, str]] = []
    for name, (size, digest) in sorted(expected.items()):
        file = folder / name
        if not file.is_file():
            damaged.append(f"{name} is missing")
        elif file.stat().st_size != size:
            actual = file.stat().st_size
            damaged.append(f"{name} is {actual:,} bytes, the manifest says {size:,} "
                           f"({'truncated' if actual < size else 'grown'})")
        elif checksums:
            to_hash.append((name, file, digest))
    if to_hash:
        with ThreadPoolExecutor(_threads(len(to_hash))) as pool:
            actual_digests = list(pool.map(lambda item: sha256_file(item[1]), to_hash))
        damaged += [f"{name}'s contents changed (SHA-256 does not match the manifest)"
                    for (name, _, digest), actual in zip(to_hash, actual_digests) if actual != digest]
    if damaged:
        shown = "; ".join(damaged[:5]) + (f"; and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        raise CheckpointDamaged(f"{folder}: checkpoint damaged: {shown}. Restore or re-save it "
                                f"({SKIP_CHECKSUMS_ENV}=1 skips the content check)")
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_complete(folder: str | Path, step: int) -> None:
    folder = Path(folder)
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            _fsync(file)
    for sub in sorted((d for d in folder.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        _fsync(sub)
    write_manifest(folder)  # after the data is on disk, before the marker that vouches for both
    with open(folder / MARKER, "w") as handle:
        handle.write(str(step))
        handle.flush()
        os.fsync(handle.fileno())
    _fsync(folder)


class MarkCompleteCheckpoints(TrainerCallback):
    def on_save(self, args, state, control, model=None, **kwargs):
        # on_save runs after the Trainer's _save_checkpoint (weights, optimizer, scheduler, RNG, state) returned,
        # on every rank: FSDP-sharded parameters are gathered by all ranks together, then rank 0 writes.
        outside = _whole(_trained_outside_adapters(model)) if model is not None else {}
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                if model is not None:
                    save_router_biases(model, folder)
                    _save_named(outside, folder / OUTSIDE_ADAPTERS)
                mark_complete(folder, state.global_step)


def _whole(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sharded (DTensor) parameters gathered whole; a collective, so every rank must call it."""
    return {name: t.full_tensor() if isinstance(t, DTensor) else t for name, t in tensors.items()}


def _router_biases(model) -> dict[str, torch.Tensor]:
    """The routers' bias buffers, named from `layers.` on: a PEFT wrapper prefixes the names."""
    return {name[name.index("layers."):]: buffer for name, buffer in model.named_buffers()
            if name.endswith("e_score_correction_bias") and "layers." in name}


def save_router_biases(model, folder: str | Path) -> None:
    _save_named(_router_biases(model), Path(folder) / ROUTER_BIASES)


def restore_router_biases(model, folder: str | Path) -> None:
    """Put back the biases a checkpoint saved (a full checkpoint also holds them in its weights: same values)."""
    _restore_named(_router_biases(model), Path(folder) / ROUTER_BIASES)


def _trained_outside_adapters(model) -> dict[str, torch.Tensor]:
    """A PEFT model's trainable parameters that are not adapters (e.g. MTP layers), by their base-model names."""
    if not hasattr(model, "peft_config"):
        return {}  # a whole model's checkpoint-N holds every parameter
    return {name.removeprefix("base_model.model."): param for name, param in model.named_parameters()
            if param.requires_grad and "lora_" not in name}


def save_trained_outside_adapters(model, folder: str | Path) -> None:
    _save_named(_trained_outside_adapters(model), Path(folder) / OUTSIDE_ADAPTERS)


def restore_trained_outside_adapters(model, folder: str | Path) -> None:
    _restore_named(_trained_outside_adapters(model), Path(folder) / OUTSIDE_ADAPTERS)


def _save_named(tensors: dict[str, torch.Tensor], path: Path) -> None:
    if tensors:
        save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, str(path))


@torch.no_grad()
def _restore_named(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Copy the file's tensors into these, by name; a missing file or name leaves them as they are."""
    if path.is_file():
        saved = load_file(str(path))
        for name, tensor in tensors.items():
            if name in saved:
                tensor.copy_(saved[name].to(tensor.device, tensor.dtype))


def _step(path: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def latest_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest fully written checkpoint; unfinished ones are removed so the Trainer never sees them
    (its checkpoint rotation would otherwise count them). Only the main process deletes."""
    folders = sorted((p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and _step(p) >= 0), key=_step)
    complete = [p for p in folders if is_complete(p)]
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:
        for leftover in folders:
            if not is_complete(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
    for candidate in reversed(complete):  # newest first; one whose files changed since it was marked is skipped
        try:
            verify_manifest(candidate)
        except CheckpointDamaged as err:
            print(f"warning: not resuming from {err}", file=sys.stderr)
            if main_process:  # kept for inspection under a name nothing else treats as a checkpoint
                try:
                    candidate.rename(candidate.with_name(candidate.name + ".damaged"))
                except OSError:
                    pass  # an earlier one of that name: skipped all the same
            continue
        return str(candidate)
    return None


SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def gather_for_save(trainer, model):
    """(module, state dict) to write a stage's final checkpoint from, with LoRA merged. Every rank must call it.

    Under FSDP or ZeRO-3 each rank's module holds only its shard, so save_pretrained on rank 0's module alone
    would write a shard or wait forever on a collective the other ranks never join. The full weights are
    all-gathered to rank 0's CPU with accelerate's get_state_dict, the call the Trainer makes for checkpoint-N
    (other ranks get an empty dict). Unsharded (one process, DDP) the module holds every weight: state dict None.
    """
    sharded = trainer.accelerator.distributed_type in SHARDED
    if hasattr(model, "merge_and_unload") and trainer.accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ReasonerError("LoRA under ZeRO-3: the adapters cannot be merged into partitioned weights; train LoRA "
                            "under FSDP or DDP (the adapter checkpoints are in checkpoint-N/)")
    to_save = merged(model)  # under FSDP every rank merges its own shard: the same collectives on all ranks
    if not sharded:
        return to_save, None
    # Without LoRA the Trainer's wrapper (the DeepSpeed engine, FSDP's root) gathers; after a merge, the base model.
    return to_save, trainer.accelerator.get_state_dict(trainer.model_wrapped if to_save is model else to_save)
