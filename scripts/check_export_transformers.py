#!/usr/bin/env python3
"""transformers on a model `tern train export` wrote (docs/experiments.md, "transformers on
the export"). By hand, in a venv with transformers >= 5 and torch (the golden-fixture venv,
crates/tern-model/tests/fixtures/README.md):

  tern train export RUN -o out/hf --form bf16      # and/or --form packed
  tern logits out/hf --prompt-ids "0 12 345 ..." --out tern_logits.safetensors
  python scripts/check_export_transformers.py out/hf tern_logits.safetensors "0 12 345 ..."

Prints transformers' logits against tern's (relative L2, top-1 agreement), both models' 16
greedy tokens, and the tokenizer and chat template round trip through AutoTokenizer."""
import sys

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, tern_logits, ids = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split()]
torch.set_num_threads(2)
model = AutoModelForCausalLM.from_pretrained(model_dir).to(torch.float32).eval()
with torch.no_grad():
    hf = model(torch.tensor([ids])).logits[0].numpy()
tern = load_file(tern_logits)["logits"]
rel = np.linalg.norm(hf - tern) / np.linalg.norm(hf)
top1 = (hf.argmax(-1) == tern.argmax(-1)).mean()
print(f"{model_dir}: logits rel L2 {rel:.2e}, top-1 agreement {top1:.3f} over {len(ids)} positions")
with torch.no_grad():
    out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)
print("transformers greedy:", " ".join(map(str, out[0, len(ids):].tolist())))
tok = AutoTokenizer.from_pretrained(model_dir)
text = "The Congress of the United States"
print("tokenizer:", tok(text)["input_ids"])
print("chat:", repr(tok.apply_chat_template([{"role": "user", "content": "Hello"}],
                                            tokenize=False, add_generation_prompt=True)))
