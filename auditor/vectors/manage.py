"""Installed vectors: find, describe and import them (the library side of ``audit vectors``)."""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditor.errors import ModelError, VectorError
from auditor.hashing import sha256_file
from auditor.resources import shipped_root
from auditor.vectors.persona import EXTRA_DIR, PersonaVector, default_vectors_dir, load_vector, save_vector

VECTOR_SUFFIXES = (".safetensors", ".pt", ".pth")


@dataclass
class InstalledVector:
    model: str  # the folder name under vectors/
    trait: str
    path: Path
    meta: dict[str, Any]
    shape: list[int] | None


def vector_roots() -> list[Path]:
    """Folders holding ``<model>/<trait>.safetensors``: $PERSONA_AUDIT_VECTORS, ./vectors, the shipped one."""
    roots = [Path(os.environ["PERSONA_AUDIT_VECTORS"])] if os.environ.get("PERSONA_AUDIT_VECTORS") else []
    roots += [Path.cwd() / "vectors", shipped_root() / "vectors"]
    out: list[Path] = []
    for r in roots:
        if r.is_dir() and r.resolve() not in [o.resolve() for o in out]:
            out.append(r)
    return out


def _read_meta(path: Path) -> dict[str, Any]:
    side = path.with_suffix(".json")
    if not side.exists():
        return {}
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise VectorError(f"{side}: not valid JSON ({e.msg}, line {e.lineno}); restore it or run audit extract again") from None


def installed(folder: str | os.PathLike | None = None, model: str | None = None) -> list[InstalledVector]:
    """Every vector file under the roots (or ``folder``: a root, or one model's folder)."""
    found: list[InstalledVector] = []
    seen: set[tuple[str, str]] = set()
    if folder is not None:
        f = Path(folder)
        if not f.is_dir():
            raise VectorError(f"{folder}: no such folder")
        has_vectors = any(p.suffix in VECTOR_SUFFIXES for p in f.iterdir())
        model_dirs = [f] if has_vectors else sorted(p for p in f.iterdir() if p.is_dir() and p.name != "traits")
    else:
        model_dirs = [d for root in vector_roots() for d in sorted(root.iterdir()) if d.is_dir() and d.name != "traits"]
    # Each model's opt-in vectors (<model>/extra/, used only when asked for) are listed as "<model>/extra".
    labelled = [(d, d.name) for d in model_dirs] + [(d / EXTRA_DIR, f"{d.name}/{EXTRA_DIR}") for d in model_dirs if (d / EXTRA_DIR).is_dir()]
    for d, label in labelled:
        if model and label.split("/")[0] != model:
            continue
        for path in sorted(d.iterdir()):
            if path.suffix not in VECTOR_SUFFIXES or (label, path.stem) in seen:
                continue
            seen.add((label, path.stem))
            meta = _read_meta(path)
            found.append(InstalledVector(label, path.name.split(".")[0], path, meta, meta.get("shape")))
    return found


def find_vector(trait: str, model: str, vectors: str | os.PathLike | None = None) -> Path:
    """A vector file by trait: ``vectors`` (a file or a folder), else vectors/<model>/."""
    if vectors is not None and Path(vectors).is_file():
        return Path(vectors)
    folder = Path(vectors) if vectors else default_vectors_dir(model)
    for suffix in VECTOR_SUFFIXES:
        path = folder / f"{trait}{suffix}"
        if path.exists():
            return path
    have = sorted({p.name.split(".")[0] for p in folder.iterdir() if p.suffix in VECTOR_SUFFIXES}) if folder.is_dir() else []
    raise VectorError(
        f"no vector for {trait} in {folder} (has: {', '.join(have) or 'none'}); run audit extract {trait}" + (f" --model {model}" if model else "")
    )


@dataclass
class ModelShape:
    name: str
    num_layers: int
    hidden_size: int
    fingerprint: str | None


def model_shape(spec: str | None, trust_remote_code: bool = False) -> ModelShape:
    """A model's name, layer count, hidden size and fingerprint from its config (weights are not loaded)."""
    from transformers import AutoConfig

    from auditor.model.loading import EMBEDDED_MODEL_NAME, _embedded_dir, directory_fingerprint

    if spec in (None, "", "embedded"):
        path, fingerprint = _embedded_dir()
        name = EMBEDDED_MODEL_NAME
    elif os.path.isdir(spec):
        path, fingerprint, name = spec, directory_fingerprint(spec), os.path.basename(os.path.normpath(spec))
    else:
        path, fingerprint, name = spec, None, spec.rstrip("/").split("/")[-1]
    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the config of model {spec!r}: {str(e).splitlines()[0]}; pass --model with a local folder") from None
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return ModelShape(name, int(cfg.num_hidden_layers), int(cfg.hidden_size), fingerprint)


def import_vector(
    file: str | os.PathLike, trait: str, layer: int, model: str | None = None, out_dir: str | os.PathLike | None = None, trust_remote_code: bool = False
) -> PersonaVector:
    """Convert a published ``.pt`` tensor ``[L + 1, d]`` into the project format for ``model``.

    Read with ``torch.load(weights_only=True)``: a file holding anything but tensors is
    refused. The tensor must have one row per hidden state of the model (``L + 1``) and
    the model's hidden size.
    """
    file = Path(file)
    if not file.exists():
        raise VectorError(f"{file}: no such file")
    if file.suffix not in (".pt", ".pth", ".safetensors"):
        raise VectorError(f"{file}: expected a .pt file (a tensor of shape [layers + 1, hidden]) or .safetensors")
    shape = model_shape(model, trust_remote_code)
    pv = load_vector(file, layer=layer, trait=trait)
    want = (shape.num_layers + 1, shape.hidden_size)
    if tuple(pv.vector.shape) != want:
        rows, hidden = pv.vector.shape
        problems = []
        if rows != want[0]:
            problems.append(f"{rows} rows, but {shape.name} has {shape.num_layers} layers, so {want[0]} hidden states")
        if hidden != want[1]:
            problems.append(f"hidden size {hidden}, but {shape.name} has {want[1]}")
        raise VectorError(
            f"{file}: shape {list(pv.vector.shape)} does not fit {shape.name}: {'; '.join(problems)}; "
            "import it for the model it was made for (--model), or extract a vector for this one with audit extract"
        )
    digest = sha256_file(file)
    meta = {
        "model": shape.name,
        "mode": "imported",
        "imported_from": str(file),
        "imported_sha256": digest,
        "layer_choice": "--layer at import",
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if shape.fingerprint:
        meta["model_fingerprint"] = shape.fingerprint
    out = PersonaVector(trait, pv.vector.float().contiguous(), layer, meta)
    save_vector(out, Path(out_dir) if out_dir else default_vectors_dir(shape.name))
    return out
