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

Each directory holds config.json, generation_config.json, model.safetensors and
expected.safetensors. The reference values come from transformers' own forward
pass in float32 (for the 1bitLLM layout, which transformers has no class for,
from transformers' BitNet class with the tensors renamed, checked against an
independent re-implementation of the 1bitLLM modeling code in this file).
An independent float64 re-implementation gives `logits_f64`, which measures the
float32 reference's own noise.

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
        w[p + "self_attn.o_proj.weight"] = lin(H, nq)
        w[p + "post_attention_layernorm.weight"] = norm(H)
        w[p + "mlp.gate_proj.weight"] = lin(I, H)
        w[p + "mlp.up_proj.weight"] = lin(I, H)
        w[p + "mlp.down_proj.weight"] = lin(H, I)
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
                linear: str, subln: str | None, act: str) -> torch.Tensor:
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

    def bl(x, name):
        if linear == "dense":
            return x @ t[name].T
        if linear == "online":
            q, s = weight_ternary(t[name])
            return act_quant(x) @ (q / s).T
        if linear == "offline":
            q = unpack_ternary(sd[name]).to(dtype)
            return (act_quant(x) @ q.T) * t[name + "_scale"]
        if linear == "ste":
            w = t[name]
            q, s = weight_ternary(w)
            wq = w + (q / s - w)
            xq = x + (act_quant(x) - x)
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

def hf_load(path: Path, dtype: torch.dtype):
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
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
              metadata={"format": "pt", "generator": "scripts/make_golden.py",
                        "torch": torch.__version__, "transformers": transformers.__version__})
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="golden-"))

    # ---- (a) bitnet online, bf16 master -------------------------------------
    master = make_weights(1234, 2, subln="bitnet", untied=False)
    master_bf16 = {k: v.to(torch.bfloat16) for k, v in master.items()}
    cfg_on = bitnet_config("online", "bfloat16")
    d_on = out / "bitnet_online_bf16"
    write_model_dir(d_on, cfg_on, master_bf16)
    ref_on = {k: v.float() for k, v in master_bf16.items()}  # exact upcast
    m = check_hf_weights(d_on, {k: v for k, v in ref_on.items()})
    from transformers.integrations.bitnet import AutoBitLinear
    kinds = {type(mod).__name__ for n, mod in m.named_modules() if n.endswith(PROJ + MLP)}
    assert kinds == {"AutoBitLinear"}, kinds
    assert all(mod.online_quant for mod in m.modules() if isinstance(mod, AutoBitLinear))
    assert type(m.lm_head).__name__ == "Linear"
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr(), "lm_head not tied"
    assert m.config.rope_parameters["rope_theta"] == cfg_on["rope_theta"], m.config.rope_parameters
    del m
    finish("bitnet_online_bf16", d_on, cfg_on, ref_args=("online", "bitnet", "relu2"), ref_sd=ref_on,
           hf_dir=d_on, extra_dtypes=(torch.bfloat16,), report=report)

    # ---- (b) bitnet packed / offline (same master) ---------------------------
    packed: dict[str, torch.Tensor] = {}
    ref_pk: dict[str, torch.Tensor] = {}
    expect_hf: dict[str, torch.Tensor] = {}
    for k, v in master_bf16.items():
        if is_bitlinear(k):
            w = v.float()
            q, s = weight_ternary(w)
            gamma = w.abs().mean()  # weight_scale = mean|W| (autobitlinear multiplies)
            p = pack_ternary(q)
            assert torch.equal(p, hf_pack_weights(q.clone())), k
            assert torch.equal(unpack_ternary(p).float(), q), k
            packed[k] = p
            packed[k + "_scale"] = gamma.reshape(1).to(torch.bfloat16)
            ref_pk[k] = p
            ref_pk[k + "_scale"] = packed[k + "_scale"].float()
            expect_hf[k] = q
            expect_hf[k + "_scale"] = packed[k + "_scale"].float()
        else:
            packed[k] = v
            ref_pk[k] = v.float()
    cfg_pk = bitnet_config("offline", "bfloat16")
    d_pk = out / "bitnet_packed"
    write_model_dir(d_pk, cfg_pk, packed)
    m = check_hf_weights(d_pk, expect_hf)
    assert all(not mod.online_quant for mod in m.modules() if isinstance(mod, AutoBitLinear))
    report["_packed_weight_scale_dtype_after_load_f32"] = str(
        m.model.layers[0].self_attn.q_proj.weight_scale.dtype)
    del m
    # what does a bf16 load keep?
    m = hf_load(d_pk, torch.bfloat16)
    report["_packed_bf16_load_weight_dtype"] = str(m.model.layers[0].self_attn.q_proj.weight.dtype)
    report["_packed_bf16_load_weight_scale_dtype"] = str(m.model.layers[0].self_attn.q_proj.weight_scale.dtype)
    del m
    finish("bitnet_packed", d_pk, cfg_pk, ref_args=("offline", "bitnet", "relu2"), ref_sd=ref_pk,
           hf_dir=d_pk, extra_dtypes=(torch.bfloat16,), report=report)
    e_on = load_file(str(d_on / "expected.safetensors"))
    e_pk = load_file(str(d_pk / "expected.safetensors"))
    report["_online_vs_packed_f32_logits"] = spread(e_pk["logits"], e_on["logits"])

    # ---- (c) 1bitLLM layout ---------------------------------------------------
    w1 = make_weights(4321, 4, subln="1bitllm", untied=False)
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
    # the faithful 1bitLLM (STE-form) f32 reference vs the plain fake-quant form
    r_ste = ref_forward(w1, cfg_1b, PROMPT, torch.float32, "ste", "1bitllm", "silu")
    r_plain = ref_forward(w1, cfg_1b, PROMPT, torch.float32, "online", "1bitllm", "silu")
    report["bitnet_1bitllm_f32"]["ref_f32_ste_vs_plain"] = spread(r_ste, r_plain)

    # ---- (d) dense LLaMA baseline, f16, untied lm_head -------------------------
    wd = make_weights(999, 2, subln=None, untied=True)
    wd16 = {k: v.to(torch.float16) for k, v in wd.items()}
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
    d_d = out / "llama_dense_f16"
    write_model_dir(d_d, cfg_d, wd16)
    ref_d = {k: v.float() for k, v in wd16.items()}
    m = check_hf_weights(d_d, ref_d)
    assert m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr()
    del m
    finish("llama_dense_f16", d_d, cfg_d, ref_args=("dense", None, "silu"), ref_sd=ref_d,
           hf_dir=d_d, report=report)

    shutil.rmtree(tmp, ignore_errors=True)
    report["_versions"] = {
        "python": sys.version.split()[0], "torch": torch.__version__,
        "transformers": transformers.__version__, "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }
    report["_sizes"] = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*"))
                        if p.is_file()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
