#!/usr/bin/env python3
"""Generate tiny golden fixtures for tern's inference-engine tests.

Run by hand (NOT in CI). It needs PyTorch and transformers, which the Rust
project does not depend on. The generated files live in
crates/tern-model/tests/fixtures/ and are committed; the Rust tests only read
them.

Setup that was used to produce the committed fixtures (CPU only):

    python3.11 -m venv /tmp/golden-venv
    /tmp/golden-venv/bin/pip install torch transformers safetensors numpy accelerate
    /tmp/golden-venv/bin/python scripts/make_golden.py

Versions used (the plain PyPI wheels; the torch wheel pulls the CUDA runtime
packages, but everything here runs on the CPU):

    python 3.11.7, torch 2.15.0, transformers 5.24.0, safetensors 0.8.0,
    numpy 2.4.6, accelerate 1.15.0 (transformers' BitNet quantizer needs it)

`transformers/integrations/bitnet.py` decorates its quantizers with
`torch.compile`, so a C compiler (gcc) must be on PATH.

What it writes (one directory per fixture, see the README next to them):

    bitnet_online_bf16/    model_type "bitnet", bf16 master weights,
                           quantization_config autobitlinear + online
                           (like microsoft/bitnet-b1.58-2B-4T-bf16)
    bitnet_packed/         the same model ternarised and packed as uint8
                           [out/4, in] + weight_scale = mean|W| (bf16),
                           autobitlinear + offline (like microsoft/bitnet-b1.58-2B-4T)
    bitnet_1bitllm_f32/    1bitLLM layout: model_type "llama",
                           architectures ["BitnetForCausalLM"], SiLU, sub-norms
                           named inner_attn_ln / ffn_layernorm, f32 latent weights
    llama_dense_f16/       plain LLaMA (no quantisation), f16, untied lm_head
    quant_ops/             op-level values from transformers' integrations/bitnet.py
                           (activation quant with exact ties and the 1e-5 floor,
                           absmean weight quant, packing, whole AutoBitLinear layers)
    report.json            every measured number (reference noise, seeds, margins)

Each model directory holds config.json, generation_config.json, model.safetensors
and expected.safetensors. The reference values come from transformers' own forward
pass in float32 (for the 1bitLLM layout, which transformers has no class for,
from transformers' BitNet class with the tensors renamed, checked against an
independent re-implementation of the 1bitLLM modeling code in this file).
An independent float64 re-implementation gives `logits_f64`, which measures the
float32 reference's own noise.

The weight seeds are searched deterministically (see search_seed) for
well-conditioned fixtures: no quantised activation near a rounding boundary,
clear top-1 margins, a non-constant greedy continuation. Re-running the script
with the same versions reproduces the files byte for byte.

Everything is generated from seeded random numbers: no third-party weights or
data are involved.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.integrations.bitnet import pack_weights as hf_pack_weights  # noqa: E402

torch.set_num_threads(1)  # keep CPU use modest; the models are tiny
# transformers' WeightQuant/ActQuant are torch.compile'd and recompile per
# weight shape; keep them compiled (the default limit of 8 falls back to eager
# half-way through a model).
torch._dynamo.config.recompile_limit = 256

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "crates" / "tern-model" / "tests" / "fixtures"

# A fixed prompt of 12 token ids (no tokenizer is involved).
PROMPT = [1, 17, 200, 43, 99, 5, 128, 255, 64, 7, 150, 33]
N_NEW = 16

# Shapes shared by all fixtures. intermediate_size 172 = 4 * 43: a multiple of
# 4 (required for packing along out_features) but not of 8/16/32/128, so the
# kernels' ragged tails get exercised (down_proj has K = 172).
BASE = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=172,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    initializer_range=0.02,
    use_cache=True,
)
HEAD_DIM = BASE["hidden_size"] // BASE["num_attention_heads"]  # 16

# o_proj / down_proj get a larger init so that the blocks, not the tied
# embedding of the current token, dominate the residual stream (otherwise a
# random tied model just repeats its last token).
OUT_GAIN = 4.0

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


# --------------------------------------------------------------------------
# Random master weights
# --------------------------------------------------------------------------

def make_weights(seed: int, n_kv: int, *, subln: str | None, untied: bool) -> dict[str, torch.Tensor]:
    """Seeded f32 weights with LLaMA names.

    subln: None (no sub-norms), "bitnet" (attn_sub_norm / ffn_sub_norm) or
    "1bitllm" (inner_attn_ln / ffn_layernorm).

    Scales are chosen so the logits have a clear top-1 (std ~4): embeddings
    N(0, 0.5^2), linears N(0, 1/in), norm weights 1 + 0.2 N(0, 1) so that a
    missing or misplaced norm changes the result.
    """
    g = torch.Generator().manual_seed(seed)
    H, I, V = BASE["hidden_size"], BASE["intermediate_size"], BASE["vocab_size"]
    nq = BASE["num_attention_heads"] * HEAD_DIM
    nkv = n_kv * HEAD_DIM

    def lin(out_f, in_f):
        return torch.randn(out_f, in_f, generator=g) / in_f ** 0.5

    def norm(n):
        return 1.0 + 0.2 * torch.randn(n, generator=g)

    w: dict[str, torch.Tensor] = {"model.embed_tokens.weight": 0.5 * torch.randn(V, H, generator=g)}
    for i in range(BASE["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(H)
        w[p + "self_attn.q_proj.weight"] = lin(nq, H)
        w[p + "self_attn.k_proj.weight"] = lin(nkv, H)
        w[p + "self_attn.v_proj.weight"] = lin(nkv, H)
        w[p + "self_attn.o_proj.weight"] = OUT_GAIN * lin(H, nq)
        w[p + "post_attention_layernorm.weight"] = norm(H)
        w[p + "mlp.gate_proj.weight"] = lin(I, H)
        w[p + "mlp.up_proj.weight"] = lin(I, H)
        w[p + "mlp.down_proj.weight"] = OUT_GAIN * lin(H, I)
        if subln == "bitnet":
            w[p + "self_attn.attn_sub_norm.weight"] = norm(nq)
            w[p + "mlp.ffn_sub_norm.weight"] = norm(I)
        elif subln == "1bitllm":
            w[p + "self_attn.inner_attn_ln.weight"] = norm(nq)
            w[p + "mlp.ffn_layernorm.weight"] = norm(I)
    w["model.norm.weight"] = norm(H)
    if untied:
        w["lm_head.weight"] = 0.5 * torch.randn(V, H, generator=g)
    return w


def is_bitlinear(name: str) -> bool:
    return name.endswith(tuple(f"{m}.weight" for m in PROJ + MLP))


# --------------------------------------------------------------------------
# Quantisation helpers (the formulas of transformers' integrations/bitnet.py)
# --------------------------------------------------------------------------

def act_quant(x: torch.Tensor) -> torch.Tensor:
    """Per-token absmax int8 fake-quant: s = 127 / max|x| (floored at 1e-5),
    round half to even, clamp [-128, 127], divide back."""
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * s).round().clamp(-128, 127) / s


def weight_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean per tensor: s = 1 / max(mean|W|, 1e-5); q = clamp(round(W s), -1, 1).
    Returns (q, s) with q in the dtype of w."""
    s = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * s).round().clamp(-1, 1), s


def pack_ternary(q: torch.Tensor) -> torch.Tensor:
    """Pack ternary rows as HF does: code = q + 1 in {0,1,2}, uint8 [out/4, in],
    plane i (rows i*R .. (i+1)*R) in bits 2i..2i+1."""
    out_f = q.shape[0]
    assert out_f % 4 == 0, "packed out_features must be a multiple of 4"
    r = out_f // 4
    codes = (q.to(torch.int16) + 1).to(torch.uint8)
    packed = torch.zeros((r, q.shape[1]), dtype=torch.uint8)
    for i in range(4):
        packed |= codes[i * r:(i + 1) * r] << (2 * i)
    return packed


def unpack_ternary(p: torch.Tensor) -> torch.Tensor:
    r = p.shape[0]
    out = torch.empty((4 * r, p.shape[1]), dtype=torch.int8)
    for i in range(4):
        out[i * r:(i + 1) * r] = ((p >> (2 * i)) & 3).to(torch.int8) - 1
    return out


# --------------------------------------------------------------------------
# Independent reference forward (any dtype; used in float64 for the noise
# estimate and in float32 as a cross-check of transformers)
# --------------------------------------------------------------------------

def ref_forward(sd: dict[str, torch.Tensor], cfg: dict, ids: list[int], dtype: torch.dtype,
                linear: str, subln: str | None, act: str, trace: list | None = None) -> torch.Tensor:
    """Full-sequence causal forward, returns logits [T, V].

    linear: "dense"  plain x @ W^T
            "online" act_quant(x) @ (q / s)^T        (transformers AutoBitLinear online)
            "offline" (act_quant(x) @ q^T) * scale   (AutoBitLinear offline)
            "ste"    1bitLLM BitLinear: x + (act_quant(x) - x), W + (wq - W)
    """
    t = {k: v.to(dtype) for k, v in sd.items()}
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    d = H // nh
    eps = cfg["rms_norm_eps"]
    theta = cfg["rope_theta"]
    T = len(ids)

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def aq(x):
        if trace is not None:  # record int8 codes and the distance of x*s to the nearest .5
            sc = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
            y = x * sc
            dist = (y - y.floor() - 0.5).abs()
            trace.append(((y.round().clamp(-128, 127)).to(torch.int16),
                          float((dist / y.abs().clamp(min=1.0)).min()), y.double()))
        return act_quant(x)

    def bl(x, name):
        if linear == "dense":
            return x @ t[name].T
        if linear == "online":
            q, s = weight_ternary(t[name])
            return aq(x) @ (q / s).T
        if linear == "offline":
            q = unpack_ternary(sd[name]).to(dtype)
            return (aq(x) @ q.T) * t[name + "_scale"]
        if linear == "ste":
            w = t[name]
            q, s = weight_ternary(w)
            wq = w + (q / s - w)
            xq = x + (aq(x) - x)
            return xq @ wq.T
        raise ValueError(linear)

    pos = torch.arange(T, dtype=dtype)
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=dtype) / d))
    fr = pos[:, None] * inv[None, :]
    emb = torch.cat([fr, fr], dim=-1)
    cos, sin = emb.cos(), emb.sin()

    def rope(x):  # x [T, heads, d], rotate_half (NeoX) pairing i <-> i + d/2
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        rot = torch.cat([-x2, x1], dim=-1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    mask = torch.full((T, T), float("-inf"), dtype=dtype).triu(1)
    h = t["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = rms(h, t[p + "input_layernorm.weight"])
        q = rope(bl(a, p + "self_attn.q_proj.weight").view(T, nh, d))
        k = rope(bl(a, p + "self_attn.k_proj.weight").view(T, nkv, d))
        v = bl(a, p + "self_attn.v_proj.weight").view(T, nkv, d)
        rep = nh // nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        sc = torch.einsum("qhd,khd->hqk", q, k) * d ** -0.5 + mask
        o = torch.einsum("hqk,khd->qhd", sc.softmax(-1), v).reshape(T, nh * d)
        if subln == "bitnet":
            o = rms(o, t[p + "self_attn.attn_sub_norm.weight"])
        elif subln == "1bitllm":
            o = rms(o, t[p + "self_attn.inner_attn_ln.weight"])
        h = h + bl(o, p + "self_attn.o_proj.weight")
        z = rms(h, t[p + "post_attention_layernorm.weight"])
        gt = bl(z, p + "mlp.gate_proj.weight")
        up = bl(z, p + "mlp.up_proj.weight")
        if act == "relu2":
            m = F.relu(gt).square() * up
        elif act == "silu":
            m = F.silu(gt) * up
        else:
            raise ValueError(act)
        if subln == "bitnet":
            m = rms(m, t[p + "mlp.ffn_sub_norm.weight"])
        elif subln == "1bitllm":
            m = rms(m, t[p + "mlp.ffn_layernorm.weight"])
        h = h + bl(m, p + "mlp.down_proj.weight")
    h = rms(h, t["model.norm.weight"])
    head = t["lm_head.weight"] if "lm_head.weight" in t else t["model.embed_tokens.weight"]
    return h @ head.T


def ref_greedy(sd, cfg, ids, dtype, linear, subln, act, n_new=N_NEW) -> list[int]:
    """Greedy decoding by full recomputation (no KV cache) with ref_forward."""
    seq = list(ids)
    for _ in range(n_new):
        seq.append(int(ref_forward(sd, cfg, seq, dtype, linear, subln, act)[-1].argmax()))
    return seq[len(ids):]


# --------------------------------------------------------------------------
# transformers side
# --------------------------------------------------------------------------

LOAD_DTYPES: dict[str, list[str]] = {}


def hf_load(path: Path, dtype: torch.dtype):
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    # transformers 5.24 + a packed (offline) BitNet checkpoint: dtype=float32
    # only reaches the quantised linears; the embedding and norms keep the
    # file's bf16 and the forward then fails on mixed dtypes. Cast explicitly.
    before = sorted({str(t.dtype) for t in model.state_dict().values()})
    LOAD_DTYPES[f"{path.name}@{dtype}"] = before
    model.to(dtype)
    model.eval()
    # Greedy generation must never stop early.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


@torch.no_grad()
def hf_logits(model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], dtype=torch.long)
    return model(input_ids=x, use_cache=False).logits[0].float()


@torch.no_grad()
def hf_greedy(model, ids: list[int]) -> list[int]:
    x = torch.tensor([ids], dtype=torch.long)
    out = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        do_sample=False,
        max_new_tokens=N_NEW,
        min_new_tokens=N_NEW,
        eos_token_id=None,
        pad_token_id=0,
        use_cache=True,
    )
    new = out[0, len(ids):].tolist()
    assert len(new) == N_NEW, new
    return new


def spread(test: torch.Tensor, ref: torch.Tensor) -> dict:
    a, b = test.double(), ref.double()
    return {
        "rel_l2": float((a - b).norm() / b.norm()),
        "max_abs": float((a - b).abs().max()),
        "ref_abs_max": float(b.abs().max()),
        "top1_agree": f"{int((a.argmax(-1) == b.argmax(-1)).sum())}/{a.shape[0]}",
    }


def margins(logits: torch.Tensor) -> torch.Tensor:
    top2 = logits.double().topk(2, dim=-1).values
    return (top2[:, 0] - top2[:, 1]).float()


# --------------------------------------------------------------------------
# Fixture writers
# --------------------------------------------------------------------------

def write_model_dir(d: Path, config: dict, tensors: dict[str, torch.Tensor]):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": config["bos_token_id"],
           "eos_token_id": config["eos_token_id"]}
    (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})


def bitnet_config(quant_mode: str | None, dtype: str, *, act="relu2", theta=500000.0, n_kv=2) -> dict:
    c = {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        **BASE,
        "num_key_value_heads": n_kv,
        "hidden_act": act,
        "rope_theta": theta,
        "tie_word_embeddings": True,
        "torch_dtype": dtype,
    }
    if quant_mode is not None:
        c["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                    "quantization_mode": quant_mode}
    return dict(sorted(c.items()))


def finish(name: str, d: Path, cfg: dict, *, ref_args: tuple, ref_sd: dict, hf_dir: Path,
           extra_dtypes: tuple = (), report: dict):
    """Run transformers (f32 reference, KV-cache greedy), the independent
    f32/f64 references, compare, and write expected.safetensors."""
    linear, subln, act = ref_args
    m32 = hf_load(hf_dir, torch.float32)
    lg32 = hf_logits(m32, PROMPT)
    greedy = hf_greedy(m32, PROMPT)
    seq = PROMPT + greedy
    seq_lg = hf_logits(m32, seq)
    # greedy with cache must agree with argmax of a full no-cache forward
    nocache = seq_lg[len(PROMPT) - 1:-1].argmax(-1).tolist()
    with torch.compiler.set_stance("force_eager"):
        lg32_eager = hf_logits(m32, PROMPT)
    del m32

    r64 = ref_forward(ref_sd, cfg, PROMPT, torch.float64, linear, subln, act)
    r32 = ref_forward(ref_sd, cfg, PROMPT, torch.float32, linear, subln, act)
    r64_seq = ref_forward(ref_sd, cfg, seq, torch.float64, linear, subln, act)
    g64 = ref_greedy(ref_sd, cfg, PROMPT, torch.float64, linear, subln, act)

    rep = {
        "greedy_ids": greedy,
        "greedy_eq_nocache_argmax": nocache == greedy,
        "greedy_eq_ref_f64": g64 == greedy,
        "ref_f64_greedy": g64,
        "hf_f32_vs_ref_f64": spread(lg32, r64),
        "hf_f32_vs_ref_f32": spread(lg32, r32),
        "hf_f32_compiled_vs_eager": spread(lg32, lg32_eager),
        "seq_hf_f32_vs_ref_f64": spread(seq_lg, r64_seq),
        "prompt_top1_margin_min": float(margins(lg32).min()),
        "greedy_step_margin_min": float(margins(seq_lg[len(PROMPT) - 1:-1]).min()),
    }
    out = {
        "input_ids": torch.tensor(PROMPT, dtype=torch.int64),
        "logits": lg32.contiguous(),
        "logits_f64": r64.contiguous(),
        "greedy_ids": torch.tensor(greedy, dtype=torch.int64),
        "seq_ids": torch.tensor(seq, dtype=torch.int64),
        "seq_logits": seq_lg.contiguous(),
        "greedy_margin": margins(seq_lg[len(PROMPT) - 1:-1]).contiguous(),
    }
    for dt in extra_dtypes:
        m = hf_load(hf_dir, dt)
        lgx = hf_logits(m, PROMPT)
        gx = hf_greedy(m, PROMPT)
        del m
        tag = str(dt).replace("torch.", "")
        rep[f"hf_{tag}_vs_hf_f32"] = spread(lgx, lg32)
        rep[f"hf_{tag}_vs_ref_f64"] = spread(lgx, r64)
        rep[f"hf_{tag}_greedy"] = gx
        rep[f"hf_{tag}_greedy_prefix_agree"] = next(
            (i for i, (x, y) in enumerate(zip(gx, greedy)) if x != y), N_NEW)
        out[f"logits_hf_{tag}"] = lgx.contiguous()
    save_file(out, str(d / "expected.safetensors"),
              metadata={"format": "pt"})  # one key: safetensors writes a map in random order
    report[name] = rep


def check_hf_weights(model_dir: Path, expect: dict[str, torch.Tensor], dtype=torch.float32):
    """Load with transformers and check that the quantised modules hold what we expect."""
    m = hf_load(model_dir, dtype)
    sdm = m.state_dict()
    for k, v in expect.items():
        got = sdm[k].float()
        if not torch.equal(got, v.float()):
            raise AssertionError(f"transformers loaded {k} differently: {got.flatten()[:8]} vs {v.flatten()[:8]}")
    return m


def derive_packed(master_bf16: dict[str, torch.Tensor]):
    """Ternarise and pack every BitLinear weight of a bf16 master.

    Returns (file tensors, reference tensors for ref_forward("offline"),
    what transformers should hold after loading in float32)."""
    packed, ref, expect_hf = {}, {}, {}
    for k, v in master_bf16.items():
        if is_bitlinear(k):
            w = v.float()
            q, _ = weight_ternary(w)
            gamma = w.abs().mean()  # weight_scale = mean|W| (autobitlinear multiplies)
            p = pack_ternary(q)
            assert torch.equal(p, hf_pack_weights(q.clone())), k
            assert torch.equal(unpack_ternary(p).float(), q), k
            packed[k] = p
            packed[k + "_scale"] = gamma.reshape(1).to(torch.bfloat16)
            ref[k] = p
            ref[k + "_scale"] = packed[k + "_scale"].float()
            expect_hf[k] = q
            expect_hf[k + "_scale"] = ref[k + "_scale"]
        else:
            packed[k] = v
            ref[k] = v.float()
    return packed, ref, expect_hf


def conditioning(sd, cfg, linear, subln, act) -> dict:
    """How well-conditioned a fixture is for golden tests.

    Runs the independent reference (greedy in f64, then the full prompt+greedy
    sequence in f64 and f32) and returns
      codes_equal: the int8 activation codes of every BitLinear call agree
                   between f32 and f64 (no rounding flip);
      min_slack:   the smallest relative distance |x*s - (k + 0.5)| / max(|x*s|, 1)
                   of any quantised activation to a rounding boundary, over all
                   BitLinear calls, f32 and f64 (the relative perturbation of
                   x*s that would flip one int8 code);
      xs_noise:    the largest |x*s (f32) - x*s (f64)| seen;
      min_margin:  the smallest top-1 minus top-2 logit gap over all positions.
    """
    seq = PROMPT + ref_greedy(sd, cfg, PROMPT, torch.float64, linear, subln, act)
    t64, t32 = [], []
    l64 = ref_forward(sd, cfg, seq, torch.float64, linear, subln, act, t64)
    ref_forward(sd, cfg, seq, torch.float32, linear, subln, act, t32)
    eq = all(torch.equal(a[0], b[0]) for a, b in zip(t64, t32))
    return {
        "codes_equal": eq,
        "min_slack": min([a[1] for a in t64] + [b[1] for b in t32], default=None),
        "xs_noise": max([float((a[2] - b[2]).abs().max()) for a, b in zip(t64, t32)], default=0.0) if eq else None,
        "min_margin": float(margins(l64).min()),
        "distinct_greedy": len(set(seq[len(PROMPT):])),
        "n_quant_values": sum(a[0].numel() for a in t64),
    }


def search_seed(name: str, first: int, n: int, build, min_margin: float = 0.05, min_distinct: int = 4):
    """Deterministically pick the seed in [first, first+n) whose weights give the
    best-conditioned fixture: no f32/f64 flip of any activation code, every
    top-1 margin >= min_margin, a greedy continuation with at least
    min_distinct different tokens (a constant continuation would not test the
    KV cache), and the largest relative slack of any quantised activation to a
    rounding boundary (so that an implementation whose float noise differs from
    torch's still lands on the same int8 codes).

    build(seed) -> list of (sd, cfg, linear, subln, act) that must all qualify."""
    best = None
    for seed in range(first, first + n):
        conds = [conditioning(*v) for v in build(seed)]
        if not all(c["codes_equal"] and c["min_margin"] >= min_margin
                   and c["distinct_greedy"] >= min_distinct for c in conds):
            continue
        score = min(c["min_slack"] if c["min_slack"] is not None else float("inf") for c in conds)
        if best is None or score > best[0]:
            best = (score, seed, conds)
    if best is None:
        raise SystemExit(f"{name}: no seed in [{first}, {first + n}) qualifies")
    print(f"{name}: seed {best[1]}, min relative slack to a rounding boundary {best[0]:.3g}", file=sys.stderr)
    return best[1], best[2]


def make_quant_ops(d: Path, report: dict):
    """Op-level golden values straight from transformers' integrations/bitnet.py."""
    from transformers.integrations.bitnet import ActQuant, AutoBitLinear, BitLinear, WeightQuant
    g = torch.Generator().manual_seed(77)
    K = 172
    rows = []
    rows.append(torch.randn(K, generator=g))                       # ordinary row
    r = torch.randn(K, generator=g) * 3                            # exact ties: max|x| = 127 -> s = 1
    r[:8] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5])
    r[8] = 127.0
    r[9:] = r[9:].clamp(-100, 100)
    rows.append(r)
    rows.append(torch.zeros(K))                                    # all zero: the 1e-5 floor
    rows.append(torch.full((K,), 4e-6) * torch.sign(torch.randn(K, generator=g)))  # max below 1e-5
    rows.append(torch.randn(K, generator=g) * 1e4)                 # large magnitudes
    x = torch.stack(rows).float()
    bl = BitLinear(K, 4, bias=False, dtype=torch.float32)
    with torch.no_grad():
        xq, xs = bl.activation_quant(x)
        xdeq = ActQuant.apply(x)

    # weights: one with mean|W| = 1 exactly and ties at +-0.5 / +-1.5, one random
    w_tie = torch.tensor([0.5, -0.5, 1.5, -1.5, 1.0, -1.0, 0.0, 2.0, -2.0, 1.0, 0.25, -0.75] * (172 * 64 // 12 + 1))
    w_tie = w_tie[: 172 * 64].reshape(172, 64).clone()
    w_tie *= 1.0 / w_tie.abs().mean()
    assert w_tie.abs().mean().item() == 1.0, w_tie.abs().mean().item()
    w_rand = torch.randn(172, 64, generator=g) * 0.05
    out = {"act_x": x, "act_q": xq, "act_scale": xs.float(), "act_deq": xdeq}
    for tag, w in (("w_tie", w_tie), ("w_rand", w_rand)):
        with torch.no_grad():
            wdeq = WeightQuant.apply(w)
        q, _ = weight_ternary(w)
        out[tag] = w
        out[tag + "_deq"] = wdeq
        out[tag + "_q"] = q.to(torch.int8)
        out[tag + "_scale"] = w.abs().mean().reshape(1)
        out[tag + "_packed"] = hf_pack_weights(q.clone())
        assert torch.equal(out[tag + "_packed"], pack_ternary(q))
    # whole AutoBitLinear layers (K = 64 -> N = 172), online and offline
    lx = torch.randn(5, 64, generator=g)
    with torch.no_grad():
        on = AutoBitLinear(64, 172, bias=False, dtype=torch.float32, online_quant=True)
        on.weight.copy_(w_rand)
        off = AutoBitLinear(64, 172, bias=False, dtype=torch.float32, online_quant=False)
        off.weight.copy_(out["w_rand_q"].float())
        off.weight_scale.copy_(out["w_rand_scale"])
        out["lin_x"] = lx
        out["lin_y_online"] = on(lx)
        out["lin_y_offline"] = off(lx)
    report["quant_ops"] = {
        "tie_row_codes": xq[1, :9].tolist(),
        "online_vs_offline_layer": spread(out["lin_y_offline"], out["lin_y_online"]),
        "w_tie_q_first12": out["w_tie_q"].flatten()[:12].tolist(),
    }
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sorted(out.items())}, str(d / "expected.safetensors"),
              metadata={"format": "pt"})  # one key: safetensors writes a map in random order


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seeds", type=int, default=300, help="seeds tried per fixture")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="golden-"))
    from transformers.integrations.bitnet import AutoBitLinear

    make_quant_ops(out / "quant_ops", report)

    # ---- (a) bitnet online, bf16 master -------------------------------------
    cfg_on = bitnet_config("online", "bfloat16")
    cfg_pk = bitnet_config("offline", "bfloat16")

    def bitnet_master(seed):
        m = make_weights(seed, 2, subln="bitnet", untied=False)
        return {k: v.to(torch.bfloat16) for k, v in m.items()}

    def build_bitnet(seed):
        mb = bitnet_master(seed)
        _, ref_pk, _ = derive_packed(mb)
        return [({k: v.float() for k, v in mb.items()}, cfg_on, "online", "bitnet", "relu2"),
                (ref_pk, cfg_pk, "offline", "bitnet", "relu2")]

    seed, conds = search_seed("bitnet", 1000, args.seeds, build_bitnet)
    master_bf16 = bitnet_master(seed)
    d_on = out / "bitnet_online_bf16"
    write_model_dir(d_on, cfg_on, master_bf16)
    ref_on = {k: v.float() for k, v in master_bf16.items()}  # exact upcast
    m = check_hf_weights(d_on, ref_on)
    kinds = {type(mod).__name__ for n, mod in m.named_modules() if n.endswith(PROJ + MLP)}
    assert kinds == {"AutoBitLinear"}, kinds
    assert all(mod.online_quant for mod in m.modules() if isinstance(mod, AutoBitLinear))
    assert type(m.lm_head).__name__ == "Linear"
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr(), "lm_head not tied"
    assert m.config.rope_parameters["rope_theta"] == cfg_on["rope_theta"], m.config.rope_parameters
    del m
    finish("bitnet_online_bf16", d_on, cfg_on, ref_args=("online", "bitnet", "relu2"), ref_sd=ref_on,
           hf_dir=d_on, extra_dtypes=(torch.bfloat16,), report=report)
    report["bitnet_online_bf16"].update(seed=seed, conditioning=conds[0])

    # ---- (b) bitnet packed / offline (same master) ---------------------------
    packed, ref_pk, expect_hf = derive_packed(master_bf16)
    d_pk = out / "bitnet_packed"
    write_model_dir(d_pk, cfg_pk, packed)
    m = check_hf_weights(d_pk, expect_hf)
    assert all(not mod.online_quant for mod in m.modules() if isinstance(mod, AutoBitLinear))
    del m
    finish("bitnet_packed", d_pk, cfg_pk, ref_args=("offline", "bitnet", "relu2"), ref_sd=ref_pk,
           hf_dir=d_pk, extra_dtypes=(torch.bfloat16,), report=report)
    report["bitnet_packed"].update(seed=seed, conditioning=conds[1])
    e_on = load_file(str(d_on / "expected.safetensors"))
    e_pk = load_file(str(d_pk / "expected.safetensors"))
    report["_online_vs_packed_f32_logits"] = spread(e_pk["logits"], e_on["logits"])

    # ---- (c) 1bitLLM layout ---------------------------------------------------
    cfg_1b = dict(sorted({
        "architectures": ["BitnetForCausalLM"],
        "model_type": "llama",
        **BASE,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "pretraining_tp": 1,
        "pad_token_id": None,
        "input_bits": 8,
        "weight_bits": 1,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }.items()))

    def build_1b(seed):
        return [(make_weights(seed, 4, subln="1bitllm", untied=False), cfg_1b, "ste", "1bitllm", "silu")]

    seed, conds = search_seed("1bitllm", 2000, args.seeds, build_1b)
    w1 = make_weights(seed, 4, subln="1bitllm", untied=False)
    d_1b = out / "bitnet_1bitllm_f32"
    write_model_dir(d_1b, cfg_1b, w1)
    # transformers has no class for this layout; the 1bitLLM forward is the
    # BitNet forward with SiLU and online absmean weight quant, so load it as
    # BitNetForCausalLM with the sub-norms renamed.
    sur = tmp / "1bitllm_as_bitnet"
    ren = {k.replace("self_attn.inner_attn_ln", "self_attn.attn_sub_norm")
            .replace("mlp.ffn_layernorm", "mlp.ffn_sub_norm"): v for k, v in w1.items()}
    write_model_dir(sur, bitnet_config("online", "float32", act="silu", theta=10000.0, n_kv=4), ren)
    check_hf_weights(sur, ren)
    finish("bitnet_1bitllm_f32", d_1b, cfg_1b, ref_args=("ste", "1bitllm", "silu"), ref_sd=w1,
           hf_dir=sur, report=report)
    report["bitnet_1bitllm_f32"].update(seed=seed, conditioning=conds[0])
    # the faithful 1bitLLM (STE-form) f32 reference vs the plain fake-quant form
    r_ste = ref_forward(w1, cfg_1b, PROMPT, torch.float32, "ste", "1bitllm", "silu")
    r_plain = ref_forward(w1, cfg_1b, PROMPT, torch.float32, "online", "1bitllm", "silu")
    report["bitnet_1bitllm_f32"]["ref_f32_ste_vs_plain"] = spread(r_ste, r_plain)

    # ---- (d) dense LLaMA baseline, f16, untied lm_head -------------------------
    cfg_d = dict(sorted({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **BASE,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
    }.items()))

    def dense_w(seed):
        return {k: v.to(torch.float16) for k, v in make_weights(seed, 2, subln=None, untied=True).items()}

    def build_d(seed):
        return [({k: v.float() for k, v in dense_w(seed).items()}, cfg_d, "dense", None, "silu")]

    # no quantisation: the margin is all that matters, take the first good seed
    seed, conds = None, None
    for s_ in range(3000, 3000 + args.seeds):
        c = conditioning(*build_d(s_)[0])
        if c["min_margin"] >= 0.05 and c["distinct_greedy"] >= 4:
            seed, conds = s_, [c]
            break
    wd16 = dense_w(seed)
    d_d = out / "llama_dense_f16"
    write_model_dir(d_d, cfg_d, wd16)
    ref_d = {k: v.float() for k, v in wd16.items()}
    m = check_hf_weights(d_d, ref_d)
    assert m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr()
    del m
    finish("llama_dense_f16", d_d, cfg_d, ref_args=("dense", None, "silu"), ref_sd=ref_d,
           hf_dir=d_d, report=report)
    report["llama_dense_f16"].update(seed=seed, conditioning=conds[0])

    shutil.rmtree(tmp, ignore_errors=True)
    report["_dtypes_right_after_from_pretrained"] = LOAD_DTYPES
    report["_versions"] = {
        "python": sys.version.split()[0], "torch": torch.__version__,
        "transformers": transformers.__version__, "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }
    report["_sizes"] = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*"))
                        if p.is_file() and p.name not in ("report.json", "README.md")}
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
