"""The Hugging Face Hub, for the size of a model prm's built-in table does not know.

A run's memory estimate (core/fit.py) needs the model's parameter count and KV-cache shape.
When the table has neither and the name alone says too little, prm reads the model's
``config.json`` and ``model.safetensors.index.json`` from the Hub. Rules:

- never with ``--offline`` (``PRM_OFFLINE`` set): then only the cache is read;
- one bounded wait (``HUB_WAIT_S``) for both files, in a daemon thread, so a Hub that hangs
  costs a dry run at most that, never a stall;
- what was learnt is cached in ``$PRM_HOME/hub`` (a published model's config does not
  change), and nothing is cached when nothing was learnt (the network may come back);
- ``HF_ENDPOINT`` (huggingface_hub's own variable) points it at a mirror, or at a fake in
  the tests; ``HF_TOKEN`` is sent for gated models and never written anywhere.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from primerl_modal import paths
from primerl_modal.core import models
from primerl_modal.core.models import ModelSpec
from primerl_modal.prices import catalogue_for, offline

if TYPE_CHECKING:
    from primerl_modal.core.plan import Plan

HUB_WAIT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")

Fetch = Callable[[str], bytes]  # a URL's body; raises OSError (urllib's errors are) or ValueError


def plan_with_hub(plan: Plan) -> Plan:
    """``plan`` with its memory fit re-estimated from the Hub, when the model is named but
    neither the table nor the Hub's cache knew its size; unchanged otherwise."""
    model = plan.fit.model
    if not model.name or model.source in ("built-in table", "hub"):
        return plan
    spec = model_spec(model.name)
    if spec is None:
        return plan
    from primerl_modal.core.fit import with_spec

    # the plan's own prices (planning just cached them): the suggestions are priced alike
    fit = with_spec(plan.fit, spec, "hub", plan.gpu, catalogue_for(plan.backend))
    return replace(plan, fit=fit)


def model_spec(name: str, *, home: Path | None = None, fetch: Fetch | None = None,
               wait_s: float | None = None) -> ModelSpec | None:
    """``name``'s size from the cache, else from the Hub within ``wait_s`` seconds (default
    HUB_WAIT_S); None when offline, unreachable, slow, or not a model the Hub describes."""
    if not _REPO.fullmatch(name):
        return None
    cache = (home or paths.prm_home()) / "hub" / f"{name.replace('/', '--')}.json"
    cached = _read_cache(cache)
    if cached is not None or offline():
        return cached
    found: list[ModelSpec | None] = []
    worker = threading.Thread(target=lambda: found.append(_ask(name, fetch or _get)),
                              daemon=True)
    worker.start()
    worker.join(HUB_WAIT_S if wait_s is None else wait_s)
    spec = found[0] if found else None
    if spec is not None:
        _write_cache(cache, spec)
    return spec


def _read_cache(path: Path) -> ModelSpec | None:
    try:
        return ModelSpec(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _write_cache(path: Path, spec: ModelSpec) -> None:
    # a cache that cannot be written costs the next dry run one more wait, nothing else
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(spec)), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass


def _ask(name: str, fetch: Fetch) -> ModelSpec | None:
    base = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    try:
        config = json.loads(fetch(f"{base}/{name}/resolve/main/config.json"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, Mapping):
        return None
    try:
        index = json.loads(fetch(f"{base}/{name}/resolve/main/model.safetensors.index.json"))
    except (OSError, ValueError):
        index = None  # a model small enough for one file has no index
    return spec_from_config(name, config, index)


def spec_from_config(name: str, config: Mapping[str, Any],
                     index: Any = None) -> ModelSpec | None:
    """A ModelSpec from a Hub ``config.json`` and its safetensors index (``total_size``
    bytes over the stored dtype's size), else from the architecture of a dense model."""
    text = config.get("text_config") or config  # a vision-language model's language model
    stored = 1 if _fp8(config) else 4 if _dtype(config) == "float32" else 2
    total = (index.get("metadata") or {}).get("total_size") if isinstance(index, Mapping) else None
    params = total / stored / 1e9 if isinstance(total, int | float) and total > 0 else None
    params = params or _dense_params(text)
    if params is None:
        return None
    stated = models.from_name(name)
    heads = _int(text, "num_attention_heads")
    hidden = _int(text, "hidden_size")
    head_dim = _int(text, "head_dim") or (hidden // heads if hidden and heads else None)
    return ModelSpec(
        params_b=round(params, 3), active_b=stated.active_b if stated else None,
        layers=_int(text, "num_hidden_layers"),
        kv_heads=_int(text, "num_key_value_heads") or heads, head_dim=head_dim,
        context=_int(text, "max_position_embeddings"),
        # vLLM serves fp32 checkpoints in 16 bits (dtype "auto")
        weight_bytes=1 if stored == 1 else 2,
    )


def _dense_params(c: Mapping[str, Any]) -> float | None:
    """Parameters of a Llama/Qwen-style dense decoder from its shape; None for an MoE or a
    shape this does not know."""
    if any(k in c for k in _MOE_KEYS):
        return None
    v, h, n, i = (_int(c, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                         "intermediate_size"))
    q = _int(c, "num_attention_heads")
    if not (v and h and n and i and q):
        return None
    kv = _int(c, "num_key_value_heads") or q
    d = _int(c, "head_dim") or h // q
    embeddings = v * h * (1 if c.get("tie_word_embeddings") else 2)
    per_layer = 2 * h * q * d + 2 * h * kv * d + 3 * h * i
    return (embeddings + n * per_layer) / 1e9


def _int(c: Mapping[str, Any], key: str) -> int | None:
    value = c.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _dtype(c: Mapping[str, Any]) -> str:
    return str(c.get("torch_dtype") or c.get("dtype") or "bfloat16")


def _fp8(c: Mapping[str, Any]) -> bool:
    quant = c.get("quantization_config")
    return isinstance(quant, Mapping) and "fp8" in str(quant.get("quant_method", "")).lower()


def _get(url: str) -> bytes:
    import urllib.request  # only when the Hub is asked: it costs a dry run ~20 ms to import

    headers = {"User-Agent": "prm"}
    token = os.environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                timeout=HUB_WAIT_S) as response:
        body: bytes = response.read(1 << 22)  # a config or an index, never megabytes
    return body
