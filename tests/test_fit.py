"""Memory fit before paying (core/fit.py, core/models.py, hub.py), through `prm run`: the
estimate for both roles, the warnings and the nodes they suggest, the refusal of weights
that cannot fit unless --force, where the model comes from, and the Hub (a fake one: no
test here reaches the network)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from primerl_modal import hub
from primerl_modal.core.fit import Fit, fit_from_json
from primerl_modal.core.plan import plan_from_json
from primerl_modal.core.profile import Setting
from primerl_modal.paths import PACKAGED_PROFILES
from primerl_modal.planning import plan_profile
from primerl_modal.run_index import open_index

SHIPPED = sorted(p.stem for p in PACKAGED_PROFILES.glob("*.toml") if p.stem != "base")
QWEN3_32B_ON_L4 = ("hendrycks-sanity", "--gpu", "L4:2", "--set", "model.name=Qwen/Qwen3-32B")
LLAMA_70B = "model.name=meta-llama/Llama-3.1-70B-Instruct"
# Llama-2-7B's published config.json: a dense model the table does not know by this name
LLAMA2_7B = {"vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32,
             "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
             "max_position_embeddings": 4096, "torch_dtype": "float16",
             "tie_word_embeddings": False}
LLAMA2_7B_BYTES = 13_476_839_424  # model.safetensors.index.json metadata.total_size


@pytest.fixture(autouse=True)
def no_real_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Hub endpoint nothing listens on, unless a test starts a fake one."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("PRM_OFFLINE", raising=False)
    monkeypatch.setenv("COLUMNS", "1000")  # the Rich plan on one line a row


def fit_of(prm: Any, *args: str) -> dict[str, Any]:
    r = prm("run", *args, "--dry-run", "--json")
    assert r.code == 0, r.err
    fit: dict[str, Any] = r.json()["fit"]
    return fit


def test_reverse_text_plan_estimates_both_roles(prm):
    fit = fit_of(prm, "reverse-text")
    assert fit["model"] == "PrimeIntellect/Qwen3-0.6B-Reverse-Text-SFT"
    assert fit["model_from"] == "named by prime-rl's configs/basic/reverse-text/rl.toml"
    assert (fit["source"], fit["params_b"], fit["verdict"]) == ("built-in table", 0.6, "fits")
    assert fit["assumptions"]["bytes_per_param"] == 16  # fp32 weights + grads + 2 AdamW states
    # one trainer GPU: 16 B/param, two bf16 layers (of 28) gathered, a 4 GB allowance
    assert fit["trainer"] == {"need_gb": round(16 * 0.6 + 4 * 0.6 / 28 + 4, 2), "have_gb": 40,
                              "share": 0.342, "weights_gb": 2.4, "budget": 1.0}
    # bf16 weights, one 40,960-token sequence of KV (28 layers x 8 KV heads x 128 x K and V
    # x 2 bytes), 2 GB for vLLM itself; vLLM may use 90% and gives the rest to the KV cache
    kv = 2 * 28 * 8 * 128 * 2 * 40960 / 1e9
    assert fit["inference"] == {"need_gb": round(1.2 + kv + 2, 2), "have_gb": 40, "share": 0.198,
                                "weights_gb": 1.2, "budget": 0.9,
                                "kv_cache_gb": round(0.9 * 40 - 1.2 - 2, 2)}
    assert fit["warning"] is None and fit["suggestions"] == []


def test_the_plan_shows_the_shares(prm):
    r = prm("run", "reverse-text", "--dry-run")
    assert r.code == 0, r.err
    assert "fits: trainer 34% / inference 20% of 40 GB" in r.out
    assert "0.6B params (built-in table" in r.out


@pytest.mark.parametrize("profile", SHIPPED)
def test_every_shipped_profile_fits(prm, profile):
    fit = fit_of(prm, profile)
    assert (fit["source"], fit["verdict"]) == ("built-in table", "fits"), fit


def test_a_model_too_big_warns_and_names_nodes_that_fit(prm):
    r = prm("run", *QWEN3_32B_ON_L4, "--dry-run")
    assert r.code == 0, r.err  # a dry run only warns: it launches nothing
    assert ("warning: Qwen/Qwen3-32B: its weights alone need 131 GB per trainer GPU, more "
            "than the 24 GB of one L4; would fit: --gpu ") in r.out
    assert "a launch is refused unless --force" in r.out
    fit = fit_of(prm, *QWEN3_32B_ON_L4)
    assert fit["verdict"] == "cannot_fit" and fit["suggestions"]
    for s in fit["suggestions"]:  # each suggestion, planned, fits
        again = fit_of(prm, *QWEN3_32B_ON_L4, *s["flags"].split())
        assert again["verdict"] == "fits", s
        assert f'{again["gpu"]["type"]}:{s["gpu"].split(":")[1]}' == s["gpu"]


def test_an_estimate_over_memory_warns_with_a_split_on_the_same_gpus(prm):
    # Qwen3-8B: 131 GB of trainer state on one A100-40GB, though its fp32 weights (33 GB) fit
    args = ("reverse-text", "--set", "model.name=Qwen/Qwen3-8B")
    fit = fit_of(prm, *args)
    assert fit["verdict"] == "may_not_fit" and fit["trainer"]["share"] > 1
    same, other = fit["suggestions"]
    assert same["gpu"] == "A100-40GB:5" and (same["trainer"], same["inference"]) == (4, 1)
    assert other["gpu"] == "A100-80GB:3" and fit_of(prm, *args, *other["flags"].split())[
        "verdict"] == "fits"
    assert fit["warning"].startswith("Qwen/Qwen3-8B may not fit A100-40GB (40 GB): trainer ~")


def test_weights_that_cannot_fit_refuse_a_launch_unless_forced(prm, local_profile, fast_fake):
    args = (str(local_profile), "--gpu", "L4:2", "--set", LLAMA_70B)
    refused = prm("run", *args)
    assert refused.code == 1
    assert ("meta-llama/Llama-3.1-70B-Instruct: its weights alone need 282 GB per trainer GPU"
            in refused.err and "add --force to launch anyway" in refused.err)
    assert open_index().list() == [] and not fast_fake.exists()  # nothing launched
    forced = prm("run", *args, "--force")
    assert forced.code == 0, forced.err
    assert "--force: launching anyway" in forced.err
    (rec,) = open_index().list()
    assert rec.status == "SUCCEEDED"
    calls = fast_fake.read_text().splitlines()  # the preflight's, then the run's
    assert calls and all("meta-llama/Llama-3.1-70B-Instruct" in call for call in calls)


def test_a_doubtful_estimate_launches_with_a_warning(prm, local_profile, fast_fake):
    r = prm("run", str(local_profile), "--gpu", "A100-40GB:2", "--set",
            "model.name=Qwen/Qwen3-8B")
    assert r.code == 0, r.err
    assert "memory: Qwen/Qwen3-8B may not fit A100-40GB" in r.err


def test_the_model_of_an_uploaded_config_comes_from_its_text(prm, tmp_path):
    config = tmp_path / "rl.toml"
    config.write_text('[model]\nname = "Qwen/Qwen3-8B"\n[inference.model]\nmax_model_len = 8192\n')
    fit = fit_of(prm, "reverse-text", "--set", f"prime_rl.config={config}")
    assert fit["model"] == "Qwen/Qwen3-8B"
    assert fit["model_from"] == f"model.name from config {config}"
    assert fit["assumptions"]["max_model_len"] == 8192
    kv = 2 * 36 * 8 * 128 * 2 * 8192 / 1e9
    assert fit["inference"]["need_gb"] == round(16.4 + kv + 2, 2)
    # overrides come after the config file on prime-rl's command line: they win
    fit = fit_of(prm, "reverse-text", "--set", f"prime_rl.config={config}",
                 "--set", "model.name=Qwen/Qwen3-1.7B")
    assert (fit["model"], fit["model_from"]) == ("Qwen/Qwen3-1.7B", "model.name from --set")
    config.write_text("max_steps = 3\n")
    fit = fit_of(prm, "reverse-text", "--set", f"prime_rl.config={config}")
    assert (fit["verdict"], fit["model"], fit["trainer"]) == ("unknown", None, None)


def test_a_2025_10_trainer_file_names_the_trainers_model(prm, tmp_path):
    files = {role: tmp_path / f"{role}.toml" for role in ("train", "orch", "infer")}
    for role, path in files.items():
        path.write_text('[model]\nname = "Qwen/Qwen3-14B"\n' if role == "train" else "")
    fit = fit_of(prm, "hendrycks-math-1b-2025-10", "--trainer-config", str(files["train"]),
                 "--orchestrator-config", str(files["orch"]),
                 "--inference-config", str(files["infer"]))
    assert fit["model"] == "Qwen/Qwen3-14B"
    assert fit["model_from"] == f"trainer.model.name from config {files['train']}"


def test_precision_optimizer_and_vllm_share_follow_the_overrides(prm):
    fit = fit_of(prm, "reverse-text", "--set", "trainer.model.optimization_dtype=bfloat16",
                 "--set", "trainer.optim.type=sgd",
                 "--set", "inference.vllm.gpu_memory_utilization=0.5")
    a = fit["assumptions"]
    assert (a["optimization_dtype"], a["optimizer"], a["bytes_per_param"]) == (
        "bfloat16", "sgd", 6)  # bf16 weights, gradients and one momentum
    assert fit["inference"]["budget"] == 0.5 and fit["trainer"]["weights_gb"] == 1.2


def test_a_size_in_the_name_is_the_fallback(prm, monkeypatch):
    monkeypatch.setenv("PRM_OFFLINE", "1")
    fit = fit_of(prm, "reverse-text", "--set", "model.name=acme/Frontier-30B-A3B-Chat")
    assert (fit["source"], fit["params_b"], fit["active_b"]) == ("name", 30.0, 3.0)
    assert fit["spec"]["layers"] is None  # so no KV share: the weights and vLLM's own
    assert fit["inference"]["need_gb"] == 30.0 * 2 + 2
    r = prm("run", "reverse-text", "--set", "model.name=acme/mystery", "--dry-run")
    assert "unknown: acme/mystery states no size" in r.out


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """A Hub on 127.0.0.1 that serves ``files`` (URL path -> JSON) and records requests."""
    state = SimpleNamespace(files={}, requests=[])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            state.requests.append(self.path)
            body = state.files.get(self.path)
            self.send_response(404 if body is None else 200)
            data = json.dumps(body).encode() if body is not None else b""
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield state
    server.shutdown()
    server.server_close()


def test_the_hub_sizes_what_the_table_does_not_know_and_is_cached(prm, fake_hub, prm_home):
    base = "/acme/Tiny-Chat/resolve/main"
    fake_hub.files[f"{base}/config.json"] = LLAMA2_7B
    fake_hub.files[f"{base}/model.safetensors.index.json"] = {
        "metadata": {"total_size": LLAMA2_7B_BYTES}, "weight_map": {}}
    fit = fit_of(prm, "reverse-text", "--set", "model.name=acme/Tiny-Chat")
    assert (fit["source"], fit["params_b"]) == ("hub", 6.738)  # fp16 bytes / 2
    assert fit["spec"] == {"layers": 32, "kv_heads": 32, "head_dim": 128, "context": 4096,
                           "weight_bytes": 2}
    assert len(fake_hub.requests) == 2
    assert (prm_home / "hub" / "acme--Tiny-Chat.json").is_file()
    fake_hub.files.clear()
    assert fit_of(prm, "reverse-text", "--set", "model.name=acme/Tiny-Chat") == fit
    assert len(fake_hub.requests) == 2  # from the cache


def test_a_model_in_one_file_is_sized_from_its_architecture(prm, fake_hub):
    fake_hub.files["/acme/One-File/resolve/main/config.json"] = LLAMA2_7B  # no index: 404
    fit = fit_of(prm, "reverse-text", "--set", "model.name=acme/One-File")
    assert (fit["source"], fit["params_b"]) == ("hub", 6.738)


def test_offline_never_asks_the_hub(prm, fake_hub, monkeypatch):
    monkeypatch.setenv("PRM_OFFLINE", "1")
    fake_hub.files["/acme/Tiny-Chat/resolve/main/config.json"] = LLAMA2_7B
    fit = fit_of(prm, "reverse-text", "--set", "model.name=acme/Tiny-Chat")
    assert fit["source"] == "unknown" and fake_hub.requests == []


def test_a_hub_that_never_answers_costs_only_the_bounded_wait(prm, monkeypatch):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections queue; nothing is ever read or answered
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setattr(hub, "HUB_WAIT_S", 0.5)
    try:
        start = time.monotonic()
        fit = fit_of(prm, "reverse-text", "--set", "model.name=acme/Slow-13B")
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    assert (fit["source"], fit["params_b"]) == ("name", 13.0)
    assert elapsed < 10  # 0.5 s of wait; the rest is a loaded machine planning


def test_a_fetch_can_be_injected(tmp_path: Path):
    asked: list[str] = []

    def fetch(url: str) -> bytes:
        asked.append(url)
        if url.endswith("config.json"):
            return json.dumps({**LLAMA2_7B, "torch_dtype": "bfloat16"}).encode()
        raise OSError("404")

    spec = hub.model_spec("acme/Injected", home=tmp_path, fetch=fetch)
    assert spec is not None and spec.params_b == 6.738 and len(asked) == 2
    assert hub.model_spec("not a repo id", home=tmp_path, fetch=fetch) is None


def test_the_fit_survives_the_plan_json_both_ways():
    plan, _ = plan_profile("hendrycks-sanity", [Setting("gpu.type", "L4", "--gpu"),
                                                Setting("gpu.count", 2, "--gpu"),
                                                Setting("overrides.model.name",
                                                        "Qwen/Qwen3-32B", "--set")])
    assert plan.fit.suggestions
    back = plan_from_json(json.loads(json.dumps(plan.to_json(with_input_texts=True))))
    assert back.fit == plan.fit
    older = plan.to_json(with_input_texts=True)
    del older["fit"]  # a plan written before fits
    assert plan_from_json(older).fit == Fit() and fit_from_json(None).verdict == "unknown"
    assert plan_from_json(older).fit.summary().startswith("not estimated")  # `prm show`
