#!/usr/bin/env python3
"""transformers reads the Hugging Face directories `tern convert` writes (docs/formats.md,
"Conversions"). Run in the golden-fixture venv (transformers 5.24.0, torch; see
crates/tern-model/tests/fixtures/README.md) from a work dir prepared with:

  F=crates/tern-model/tests/fixtures
  for m in bitnet_packed bitnet_online_bf16 bitnet_1bitllm_f32 llama_dense_f16; do
    tern convert $F/$m $m.gguf --type tq2_0
    tern convert $m.gguf $m-hf                  # packed uint8 + weight_scale (offline)
    tern convert $m.gguf $m-bf16 --type bf16    # bf16 master weights (online)
  done
  # a model with a tokenizer: TOK_SRC (an HF dir with tokenizer.json) -> GGUF -> HF
  tern convert $TOK_SRC tok.gguf && tern convert tok.gguf tok-hf

  python transformers_check.py FIXTURES_DIR TOK_SRC

For each directory: transformers' f32 logits of the fixture prompt against the fixture's
expected logits (transformers' own, on the original checkpoint), and its 16 greedy tokens.
Then the rebuilt tokenizer.json against the original one, and the chat template.
"""
import sys

import numpy as np
import torch
import torch._dynamo
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

torch._dynamo.config.recompile_limit = 256
torch.set_num_threads(1)
FIX, TOK_SRC = sys.argv[1], sys.argv[2]


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


for name in ["bitnet_packed", "bitnet_online_bf16", "bitnet_1bitllm_f32", "llama_dense_f16"]:
    exp = load_file(f"{FIX}/{name}/expected.safetensors")
    ids = torch.tensor(exp["input_ids"]).unsqueeze(0)
    for kind in ["hf", "bf16"]:
        d = f"{name}-{kind}"
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).to(torch.float32).eval()
        with torch.no_grad():
            lg = m(ids, use_cache=False).logits[0].numpy()
            g = m.generate(ids, do_sample=False, max_new_tokens=16, min_new_tokens=16,
                           eos_token_id=None, use_cache=True)[0, ids.shape[1]:].tolist()
        same = "same" if g == exp["greedy_ids"].tolist() else g
        print(f"{d}: {type(m).__name__}, logits rel L2 {rel(lg, exp['logits']):.2e}, greedy {same}")

orig = PreTrainedTokenizerFast(tokenizer_file=f"{TOK_SRC}/tokenizer.json")
t = AutoTokenizer.from_pretrained("tok-hf")
for s in ["the cat sat on the mat", "Hello, world!\nthe thing 123 4567 sing"]:
    a, b = orig(s)["input_ids"], t(s)["input_ids"]
    print("tokenizer:", "same ids" if a == b else f"DIFFERENT {a} {b}", "decode ok" if t.decode(b[1:]) == s else "decode differs")
print("chat template:", repr(t.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)))
