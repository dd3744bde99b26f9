"""What prm knows offline about the models prime-rl runs: their size and the shape of their
KV cache, and which model each of prime-rl's own configs names.

prm cannot read a config inside the pinned prime-rl before the image exists, nor ask the
Hugging Face Hub without a network, yet the memory estimate (core/fit.py) is wanted before
anything is paid for. So the models of the shipped profiles and of prime-rl's configs/ and
examples/ are written down here, from each model's published config.json and model card
(parameters with tied embeddings counted once, as they sit in memory). A name the table
does not know still says its size when it carries one (``-70B``, ``-30B-A3B``, ``0.6B``);
the Hub (primerl_modal/hub.py) fills in the rest when it is reachable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """A model's size and KV-cache shape; what is not known is None."""

    params_b: float  # all parameters, billions (every expert of an MoE)
    active_b: float | None = None  # an MoE's parameters per token
    layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    context: int | None = None  # max_position_embeddings: vLLM's default max_model_len
    weight_bytes: int = 2  # per parameter as published (bf16)


def _dense(params_b: float, layers: int, kv_heads: int, context: int,
           head_dim: int = 128) -> ModelSpec:
    return ModelSpec(params_b, None, layers, kv_heads, head_dim, context)


def _moe(params_b: float, active_b: float, layers: int, kv_heads: int,
         context: int) -> ModelSpec:
    return ModelSpec(params_b, active_b, layers, kv_heads, 128, context)


_QWEN3_06B = _dense(0.6, 28, 8, 40960)
_QWEN3_17B = _dense(1.7, 28, 8, 40960)
_QWEN3_4B = _dense(4.0, 36, 8, 40960)
_QWEN3_4B_2507 = _dense(4.0, 36, 8, 262144)
_QWEN3_30B = _moe(30.5, 3.3, 48, 4, 40960)
_QWEN3_30B_2507 = _moe(30.5, 3.3, 48, 4, 262144)
_QWEN3_235B = _moe(235.0, 22.0, 94, 4, 40960)
_QWEN3_235B_2507 = _moe(235.0, 22.0, 94, 4, 262144)
_LLAMA31_8B = _dense(8.03, 32, 8, 131072)
_LLAMA31_70B = _dense(70.6, 80, 8, 131072)
_R1_QWEN_15B = _dense(1.78, 28, 2, 131072)  # Qwen2.5-Math-1.5B with an untied LM head
_GLM45_AIR = _moe(106.0, 12.0, 46, 8, 131072)

MODELS: dict[str, ModelSpec] = {
    "Qwen/Qwen3-0.6B": _QWEN3_06B,
    "Qwen/Qwen3-0.6B-Base": _QWEN3_06B,
    "Qwen/Qwen3-1.7B": _QWEN3_17B,
    "Qwen/Qwen3-1.7B-Base": _QWEN3_17B,
    "Qwen/Qwen3-4B": _QWEN3_4B,
    "Qwen/Qwen3-4B-Base": _QWEN3_4B,
    "Qwen/Qwen3-4B-Instruct-2507": _QWEN3_4B_2507,
    "Qwen/Qwen3-4B-Thinking-2507": _QWEN3_4B_2507,
    "Qwen/Qwen3-8B": _dense(8.2, 36, 8, 40960),
    "Qwen/Qwen3-8B-Base": _dense(8.2, 36, 8, 40960),
    "Qwen/Qwen3-14B": _dense(14.8, 40, 8, 40960),
    "Qwen/Qwen3-14B-Base": _dense(14.8, 40, 8, 40960),
    "Qwen/Qwen3-32B": _dense(32.8, 64, 8, 40960),
    "Qwen/Qwen3-30B-A3B": _QWEN3_30B,
    "Qwen/Qwen3-30B-A3B-Base": _QWEN3_30B,
    "Qwen/Qwen3-30B-A3B-Instruct-2507": _QWEN3_30B_2507,
    "Qwen/Qwen3-30B-A3B-Thinking-2507": _QWEN3_30B_2507,
    "Qwen/Qwen3-235B-A22B": _QWEN3_235B,
    "Qwen/Qwen3-235B-A22B-Instruct-2507": _QWEN3_235B_2507,
    "Qwen/Qwen3-235B-A22B-Thinking-2507": _QWEN3_235B_2507,
    "meta-llama/Llama-3.2-1B": _dense(1.24, 16, 8, 131072, head_dim=64),
    "meta-llama/Llama-3.2-1B-Instruct": _dense(1.24, 16, 8, 131072, head_dim=64),
    "meta-llama/Llama-3.2-3B": _dense(3.21, 28, 8, 131072),
    "meta-llama/Llama-3.2-3B-Instruct": _dense(3.21, 28, 8, 131072),
    "meta-llama/Llama-3.1-8B": _LLAMA31_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA31_8B,
    "meta-llama/Meta-Llama-3.1-8B-Instruct": _LLAMA31_8B,
    "meta-llama/Meta-Llama-3-8B-Instruct": _dense(8.03, 32, 8, 8192),
    "meta-llama/Llama-3.1-70B": _LLAMA31_70B,
    "meta-llama/Llama-3.1-70B-Instruct": _LLAMA31_70B,
    "meta-llama/Meta-Llama-3.1-70B-Instruct": _LLAMA31_70B,
    "meta-llama/Llama-3.3-70B-Instruct": _LLAMA31_70B,
    "meta-llama/Meta-Llama-3-70B-Instruct": _dense(70.6, 80, 8, 8192),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": _R1_QWEN_15B,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": _dense(7.62, 28, 4, 131072),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": _dense(14.8, 48, 8, 131072),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": _dense(32.8, 64, 8, 131072),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": _LLAMA31_8B,
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": _LLAMA31_70B,
    # fine-tunes prime-rl's configs use: the architecture of their base
    "PrimeIntellect/Qwen3-0.6B-Reverse-Text-SFT": _QWEN3_06B,
    "PrimeIntellect/Qwen3-1.7B-Wordle-SFT": _QWEN3_17B,
    "willcb/DeepSeek-R1-Distill-Qwen-1.5B": _R1_QWEN_15B,
    "zai-org/GLM-4.5-Air": _GLM45_AIR,
    "PrimeIntellect/INTELLECT-3": _GLM45_AIR,  # post-trained from GLM-4.5-Air-Base
}

# The model each of prime-rl's own configs names (read from prime-rl's configs/ and
# examples/; paths of both the current layout and the 2025-10 three-file one).
CONFIG_MODELS: dict[str, str] = {
    "configs/basic/reverse-text/rl.toml": "PrimeIntellect/Qwen3-0.6B-Reverse-Text-SFT",
    "configs/basic/reverse_text/rl.toml": "PrimeIntellect/Qwen3-0.6B-Reverse-Text-SFT",
    "examples/basic/reverse-text/rl.toml": "PrimeIntellect/Qwen3-0.6B-Reverse-Text-SFT",
    "configs/basic/wordle/rl.toml": "PrimeIntellect/Qwen3-1.7B-Wordle-SFT",
    "examples/basic/wordle/rl.toml": "PrimeIntellect/Qwen3-1.7B-Wordle-SFT",
    "configs/basic/wiki-search/rl.toml": "Qwen/Qwen3-4B-Instruct-2507",
    "configs/basic/wiki_search/rl.toml": "Qwen/Qwen3-4B-Instruct-2507",
    "examples/basic/wiki-search/rl.toml": "Qwen/Qwen3-4B-Instruct-2507",
    "configs/basic/alphabet-sort/rl.toml": "Qwen/Qwen3-4B-Instruct-2507",
    "configs/basic/alphabet_sort/rl.toml": "Qwen/Qwen3-4B-Instruct-2507",
    "examples/basic/alphabet-sort/rl.toml": "Qwen/Qwen3-4B-Instruct-2507",
    "configs/basic/hendrycks-sanity/rl.toml": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "configs/basic/hendrycks_sanity/rl.toml": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "examples/basic/hendrycks-sanity/rl.toml": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "examples/basic/hendrycks-sanity/qwen3-0.6b.toml": "Qwen/Qwen3-0.6B",
    "examples/advanced/qwen3-30b-a3b/math.toml": "Qwen/Qwen3-30B-A3B-Thinking-2507",
    "examples/advanced/qwen3-30b-a3b/swe.toml": "Qwen/Qwen3-30B-A3B-Thinking-2507",
    "examples/advanced/qwen3-30b-a3b/tool.toml": "Qwen/Qwen3-30B-A3B-Instruct-2507",
    "examples/advanced/glm-4.5-air/swe.toml": "zai-org/GLM-4.5-Air",
    "configs/hendrycks_math/1b/rl/train.toml": "willcb/DeepSeek-R1-Distill-Qwen-1.5B",
    "configs/hendrycks_math/1b/rl/infer.toml": "willcb/DeepSeek-R1-Distill-Qwen-1.5B",
    "configs/reverse_text/rl/train.toml": "PrimeIntellect/Qwen3-0.6B-Reverse-Text-SFT",
    "configs/reverse_text/rl/infer.toml": "PrimeIntellect/Qwen3-0.6B-Reverse-Text-SFT",
}

_BY_ID = {name.lower(): (name, spec) for name, spec in MODELS.items()}
_BY_BASENAME = {name.rsplit("/", 1)[-1].lower(): (name, spec) for name, spec in MODELS.items()}
# "-70B", "_8b", "0.6B": a size not glued to a letter before it (so "A3B" is not one)
_SIZE = re.compile(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)[Bb](?![A-Za-z0-9])")
_ACTIVE = re.compile(r"-A(\d+(?:\.\d+)?)B(?![A-Za-z0-9])", re.I)


def known(name: str) -> tuple[str, ModelSpec] | None:
    """The table's entry for ``name`` (case-insensitive), or for a copy of a model it knows
    under another owner (``someone/Qwen3-8B``): the name it is known by, and its spec."""
    return _BY_ID.get(name.lower()) or _BY_BASENAME.get(name.rsplit("/", 1)[-1].lower())


def config_model(path: str) -> str | None:
    """The model prime-rl's own config at ``path`` names, when the table has it."""
    return CONFIG_MODELS.get(path.removeprefix("./"))


def from_name(name: str) -> ModelSpec | None:
    """The size a model's name states (``Llama-3.1-70B``, ``Qwen3-30B-A3B``), nothing else:
    the largest size in the name is taken as the total."""
    sizes = [float(m) for m in _SIZE.findall(name.rsplit("/", 1)[-1])]
    if not sizes:
        return None
    active = _ACTIVE.search(name)
    return ModelSpec(max(sizes), float(active.group(1)) if active else None)
