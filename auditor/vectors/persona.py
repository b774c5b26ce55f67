"""The persona vector type and its files.

Project format: ``<trait>.safetensors`` holding one float32 tensor ``vector`` of shape
``[L + 1, d]`` (row ``l`` is the direction at ``h[l]``, not normalised), beside a JSON
sidecar ``<trait>.json`` with the model fingerprint, the recommended layer, how the
vector was made and, optionally, its calibration (the distribution of scores over a
clean reference set). The published ``.pt`` files (a bare ``[L + 1, d]`` tensor) are
read with ``torch.load(weights_only=True)``, never unpickled.

A project vector may also hold a **learned reference** (``reference`` [L + 1, d] and
``reference_bias`` [L + 1], float32): at each layer, a linear map from the hidden state at the
last prompt token to the projection a neutral answer to that prompt is expected to have (on the
unit direction of that layer). The prompt-last baseline subtracts that prediction instead of the
last prompt token's own projection (``docs/METHOD.md``, "The reference point").
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.errors import VectorError
from auditor.resources import SOURCE_ROOT, shipped_root

SIDE_SUFFIX = ".json"
# Sidecar fields that may name a file: written relative to the repository (or the working
# directory), else as the bare file name, so a sidecar never records another machine's folders.
PATH_FIELDS = (("trait_file",), ("model_source",), ("calibration", "reference"))
REPO_ROOT = SOURCE_ROOT


def portable_path(value: str) -> str:
    """An absolute path -> relative to the repository, the installed data folder or the working directory (with ``/``),
    else its file name; relative paths and non-paths (``embedded``, a Hub id) are kept."""
    if not value or not os.path.isabs(value):
        return value
    resolved = Path(value).resolve()
    for root in (REPO_ROOT, shipped_root(), Path.cwd().resolve()):
        try:
            return resolved.relative_to(root).as_posix()
        except ValueError:
            continue
    return resolved.name


def portable_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``meta`` whose :data:`PATH_FIELDS` hold no absolute path."""
    out = copy.deepcopy(meta)
    for keys in PATH_FIELDS:
        holder = out
        for key in keys[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and isinstance(holder.get(keys[-1]), str):
            holder[keys[-1]] = portable_path(holder[keys[-1]])
    return out


@dataclass
class PersonaVector:
    trait: str
    vector: Any  # torch.Tensor [L + 1, d] float32
    layer: int
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    reference: Any = None  # torch.Tensor [L + 1, d] float32, or None: the prompt-last reference is the direction itself
    reference_bias: Any = None  # torch.Tensor [L + 1] float32, with ``reference``

    @property
    def num_layers(self) -> int:
        return int(self.vector.shape[0]) - 1

    @property
    def hidden_size(self) -> int:
        return int(self.vector.shape[1])

    @property
    def sha256(self) -> str:
        """Of what a scan scores with: the vector's bytes, then the learned reference's (when it has one), so a rescan
        never reuses scores made with another reference; a vector without one hashes as it always did."""
        h = hashlib.sha256(self.vector.float().contiguous().numpy().tobytes())
        if self.reference is not None:
            h.update(self.reference.float().contiguous().numpy().tobytes())
            h.update(self.reference_bias.float().contiguous().numpy().tobytes())
        return h.hexdigest()

    @property
    def calibration(self) -> dict[str, Any] | None:
        return self.meta.get("calibration")

    def direction(self, layer: int | None = None):
        """Unit direction at ``layer`` (default: the vector's layer): [d] float32."""
        row = self.vector[self.layer if layer is None else layer].float()
        norm = row.norm()
        if not float(norm) > 0:
            raise VectorError(f"{self.path or self.trait}: the vector is zero at layer {self.layer if layer is None else layer}; choose another --layer")
        return row / norm

    def reference_at(self, layer: int | None = None) -> tuple[Any, float] | None:
        """The learned prompt-last reference at ``layer`` (default: the vector's layer) as (weights [d], bias), or None."""
        if self.reference is None:
            return None
        at = self.layer if layer is None else layer
        return self.reference[at].float(), float(self.reference_bias[at])

    def threshold(self, baseline: str, score: str, percentile: float) -> float | None:
        """Calibrated flag threshold: the clean reference set's ``percentile`` of ``score`` (a column name)."""
        from auditor.score import ScoreMeaning

        return ScoreMeaning.from_column(baseline, score).threshold(self.calibration, self.layer, percentile)


def save_vector(pv: PersonaVector, folder: str | os.PathLike) -> str:
    """Write ``<folder>/<trait>.safetensors`` and its sidecar; returns the tensor path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensor_path = folder / f"{pv.trait}.safetensors"
    tensors = {"vector": pv.vector.float().contiguous()}
    if pv.reference is not None:
        tensors["reference"] = pv.reference.float().contiguous()
        tensors["reference_bias"] = pv.reference_bias.float().contiguous()
    save_file(tensors, str(tensor_path))
    meta = portable_meta(pv.meta)
    meta.update({"trait": pv.trait, "layer": pv.layer, "shape": list(pv.vector.shape), "sha256": pv.sha256})
    tmp = folder / f".{pv.trait}.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / f"{pv.trait}{SIDE_SUFFIX}")
    pv.path = str(tensor_path)
    return str(tensor_path)


def load_vector(path: str | os.PathLike, layer: int | None = None, trait: str | None = None) -> PersonaVector:
    """Read a project ``.safetensors`` vector (with sidecar) or a published ``.pt`` tensor."""
    import torch

    path = Path(path)
    if not path.exists():
        raise VectorError(f"{path}: no such vector file")
    name = trait or path.name.split(".")[0]
    sidecar = path.with_suffix(SIDE_SUFFIX)
    meta: dict[str, Any] = {}
    if sidecar.exists():
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError as e:
            raise VectorError(f"{sidecar}: not valid JSON ({e.msg}, line {e.lineno}); restore it or run audit extract again") from None
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise VectorError(f"{path}: not a readable safetensors file ({e})") from None
        if "vector" not in tensors:
            raise VectorError(f"{path}: holds no tensor named 'vector' (found: {', '.join(tensors) or 'none'})")
        vector = tensors["vector"]
        reference, reference_bias = _reference_tensors(path, tensors, vector)
    elif path.suffix in (".pt", ".pth"):
        reference = reference_bias = None  # the published format has no learned reference
        try:
            vector = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything that is not plain tensors
            raise VectorError(f"{path}: not a plain tensor file ({type(e).__name__}); persona-audit never unpickles objects") from None
        if isinstance(vector, dict) and len(vector) == 1:
            vector = next(iter(vector.values()))
        if not isinstance(vector, torch.Tensor):
            raise VectorError(f"{path}: holds a {type(vector).__name__}, not a tensor of shape [layers + 1, hidden]")
    else:
        raise VectorError(f"{path}: unknown vector file type; use .safetensors (project format) or .pt (published format)")
    if vector.dim() != 2:
        raise VectorError(f"{path}: tensor has shape {list(vector.shape)}, expected [layers + 1, hidden]")
    vector = vector.float()
    chosen = layer if layer is not None else meta.get("layer")
    if chosen is None:
        raise VectorError(f"{path}: no recommended layer is stored with this vector; pass --layer (e.g. --layer {vector.shape[0] * 2 // 3})")
    chosen = int(chosen)
    if not 0 <= chosen < vector.shape[0]:
        raise VectorError(f"{path}: layer {chosen} is outside 0..{vector.shape[0] - 1}")
    return PersonaVector(
        trait=meta.get("trait", name) if trait is None else trait,
        vector=vector,
        layer=chosen,
        meta=meta,
        path=str(path),
        reference=reference,
        reference_bias=reference_bias,
    )


def _reference_tensors(path: Path, tensors: dict[str, Any], vector: Any) -> tuple[Any, Any]:
    """The learned reference of a project file (``reference``, ``reference_bias``), checked against the vector's shape; (None, None) without one."""
    if "reference" not in tensors and "reference_bias" not in tensors:
        return None, None
    if "reference" not in tensors or "reference_bias" not in tensors:
        missing = "reference" if "reference" not in tensors else "reference_bias"
        raise VectorError(f"{path}: holds a learned reference without its {missing!r} tensor; run audit extract again to rewrite the file")
    ref, bias = tensors["reference"], tensors["reference_bias"]
    if list(ref.shape) != list(vector.shape) or list(bias.shape) != [vector.shape[0]]:
        raise VectorError(
            f"{path}: the learned reference has shape {list(ref.shape)} and bias {list(bias.shape)}, expected {list(vector.shape)} and "
            f"[{vector.shape[0]}] (the vector's); run audit extract again to rewrite the file"
        )
    return ref.float(), bias.float()


def default_vectors_dir(model_name: str) -> Path:
    """``vectors/<model>/``: $PERSONA_AUDIT_VECTORS, else ./vectors, else the one beside the package."""
    roots = []
    if os.environ.get("PERSONA_AUDIT_VECTORS"):
        roots.append(Path(os.environ["PERSONA_AUDIT_VECTORS"]))
    roots += [Path.cwd() / "vectors", shipped_root() / "vectors"]
    for root in roots:
        if (root / model_name).is_dir():
            return root / model_name
    return roots[-1] / model_name


EXTRA_DIR = "extra"


def optional_vectors(folder: Path) -> dict[str, Path]:
    """trait -> file of the opt-in vectors in ``<folder>/extra/``: a default scan (no --traits)
    does not use them; ``--traits NAME`` or ``--vectors <folder>/extra`` does."""
    extra = folder / EXTRA_DIR
    if not extra.is_dir():
        return {}
    return {p.name.split(".")[0]: p for p in sorted(extra.iterdir()) if p.suffix in (".safetensors", ".pt", ".pth")}


def load_vectors(
    path: str | os.PathLike | None,
    model_name: str,
    traits: list[str] | None = None,
    layers: dict[str, int] | None = None,
    num_layers: int | None = None,
    hidden_size: int | None = None,
    fingerprint: str | None = None,
) -> list[PersonaVector]:
    """Vectors for a scan: a folder (every ``*.safetensors``/``*.pt`` in it, not in its
    subfolders) or one file. A trait named in ``traits`` that the folder lacks is also looked
    up in its opt-in ``extra/`` subfolder (:func:`optional_vectors`).

    Refuses vectors made for another model: wrong layer count or hidden size, or a
    sidecar fingerprint that differs from the model's.
    """
    layers = layers or {}
    folder = Path(path) if path else default_vectors_dir(model_name)
    if folder.is_file():
        files = [folder]
    elif folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".pt", ".pth"))
    else:
        raise VectorError(
            f"no persona vectors at {folder}; make them with: audit extract TRAIT"
            + ("" if path else f" (they go to vectors/{model_name}/)")
            + ", or pass --vectors PATH"
        )
    by_trait = {p.name.split(".")[0]: p for p in files}
    if traits:
        # Opt-in vectors (<folder>/extra/) are used only when a trait is asked for by name.
        extra = optional_vectors(folder) if folder.is_dir() else {}
        for t in traits:
            if t not in by_trait and t in extra:
                by_trait[t] = extra[t]
        missing = [t for t in traits if t not in by_trait]
        if missing:
            known = ", ".join(sorted(by_trait)) or "none"
            raise VectorError(
                f"no vector for {', '.join(missing)} in {folder} (has: {known}; opt-in: {', '.join(sorted(extra)) or 'none'}); run audit extract {missing[0]}"
            )
        by_trait = {t: by_trait[t] for t in traits}
    if not by_trait:
        raise VectorError(f"{folder} holds no vector files (*.safetensors or *.pt); run audit extract TRAIT")
    out = []
    for trait, file in by_trait.items():
        pv = load_vector(file, layer=layers.get(trait, layers.get("*")), trait=trait)
        if num_layers is not None and (pv.num_layers != num_layers or pv.hidden_size != hidden_size):
            raise VectorError(
                f"{file}: made for a model with {pv.num_layers} layers and hidden size {pv.hidden_size}, "
                f"but this model has {num_layers} and {hidden_size}; extract vectors for this model with audit extract {trait} --model ..."
            )
        made_for = pv.meta.get("model_fingerprint")
        if fingerprint and made_for and made_for != fingerprint:
            raise VectorError(
                f"{file}: made for model {pv.meta.get('model', '?')} (fingerprint {made_for}), not this one ({fingerprint}); "
                f"extract vectors for this model with audit extract {trait}, or pass --vectors PATH"
            )
        out.append(pv)
    return out
