#!/usr/bin/env python3
"""Record the token ids llama.cpp's own SentencePiece tokenizer gives for generated texts.

tern builds llama.cpp's SPM tokenizer (a score-driven bigram merge) as a `tokenizers` BPE
model with merges derived from the scores (`crates/tern-model/src/gguf_tokenizer.rs`). The
46 texts of llama.cpp's vocab test exercise few merge orders, so this script compiles
llama.cpp's own `llm_tokenizer_spm_session` (copied verbatim from `src/llama-vocab.cpp`, with
`unicode.cpp` for `unicode_len_utf8`) against a small stand-in for `llama_vocab` (the four
lookups the session uses, with llama.cpp's `byte_to_token` rule), runs it on a few thousand
generated texts, and writes the ids. `crates/tern-model/tests/gguf_tokenizer.rs`
(`spm_matches_llama_cpp_recorded_ids`) checks tern against that file.

What the driver adds around the session is transcribed from `llama_vocab::impl`, as llama.cpp's
vocab test runs it (`parse_special = false`): `tokenizer_st_partition` splits user-defined
tokens out of the text, and `tokenize`'s SPM branch prepends one space to each text fragment
at the start or after a token (`add_space_prefix`, on in these files) and replaces every space
by U+2581.

    python3 scripts/llama_cpp_spm.py /path/to/llama.cpp OUT.json NAME=VOCAB.gguf:N ...

The committed `crates/tern-model/tests/fixtures/vocab/spm-llama.cpp.json` was made from the
llama.cpp copy in the llama-cpp-python 0.3.36 sdist with
`llama-spm=.../ggml-vocab-llama-spm.gguf:1500 phi-3=.../ggml-vocab-phi-3.gguf:300`.
Needs gguf-py (`pip install gguf`) and a C++17 compiler (`CXX`, default g++).
"""

import os
import random
import subprocess
import sys
import tempfile
import unicodedata

from gguf import GGUFReader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_cpp_pretok  # noqa: E402  (shared C++ helpers and file writers)

DRIVER_HEAD = r"""
#include "unicode.h"
#include <cstdint>
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <queue>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

typedef int32_t llama_token;
#define LLAMA_TOKEN_NULL -1

// The parts of llama_vocab that llm_tokenizer_spm_session uses.
struct llama_vocab {
    struct token_data { std::string text; float score; };
    std::vector<token_data> id_to_token;
    std::unordered_map<std::string, llama_token> token_to_id;

    llama_token text_to_token(const std::string & text) const {
        auto it = token_to_id.find(text);
        return it == token_to_id.end() ? LLAMA_TOKEN_NULL : it->second;
    }
    uint32_t n_tokens() const { return (uint32_t) id_to_token.size(); }
    const token_data & get_token_data(llama_token id) const { return id_to_token.at(id); }
    // llama_vocab::byte_to_token for SPM.
    llama_token byte_to_token(uint8_t ch) const {
        static const char * hex = "0123456789ABCDEF";
        const char buf[7] = { '<', '0', 'x', hex[ch >> 4], hex[ch & 15], '>', 0 };
        auto token = token_to_id.find(buf);
        if (token != token_to_id.end()) {
            return (*token).second;
        }
        const char buf2[2] = { (char)ch, 0 };
        return token_to_id.at(buf2);
    }
};

// ---- verbatim from llama.cpp src/llama-vocab.cpp ----
"""

DRIVER_MAIN = llama_cpp_pretok.CPP_AFTER_VERBATIM + r"""
// argv[1]: NUL-separated tokens; argv[2]: one score per line; argv[3]: NUL-separated texts;
// argv[4]: one token type per line; argv[5]: 1 for Phi-3's RSTRIP rule. Prints one line of
// ids per text.
int main(int argc, char ** argv) {
    llama_vocab vocab;
    const auto tokens = split_nul(slurp(argv[1]));
    std::vector<int> types;
    {
        std::ifstream in(argv[4]);
        int t;
        while (in >> t) types.push_back(t);
    }
    // llama_vocab::impl::load for model names containing "phi-3"/"phi3": every special
    // (control, user-defined, unknown) token and "</s>" get RSTRIP, except these three.
    std::vector<bool> rstrip(tokens.size(), false);
    if (std::string(argv[5]) == "1") {
        for (size_t i = 0; i < tokens.size(); ++i) {
            const auto & t = tokens[i];
            rstrip[i] = (types[i] == 2 || types[i] == 3 || types[i] == 4 || t == "</s>") &&
                        t != "<unk>" && t != "<s>" && t != "<|endoftext|>";
        }
    }
    std::ifstream scores(argv[2]);
    for (size_t i = 0; i < tokens.size(); ++i) {
        float s;
        scores >> s;
        vocab.id_to_token.push_back({ tokens[i], s });
        vocab.token_to_id[tokens[i]] = (llama_token) i;  // a repeated string keeps its last id
    }
    for (const auto & raw : split_nul(slurp(argv[3]))) {
        // llama_vocab::impl::tokenize, SPM branch: each raw fragment after a token (or at the
        // start) gets the space prefix, then spaces become U+2581.
        std::vector<llama_token> out;
        bool is_prev_special = true;
        for (const auto & f : partition(raw, tokens, types, rstrip)) {
            if (f.is_token) {
                out.push_back(f.id);
                is_prev_special = true;
                continue;
            }
            std::string text = is_prev_special ? " " + f.text : f.text;  // add_space_prefix
            std::string escaped;                                          // llama_escape_whitespace
            for (char c : text) {
                if (c == ' ') escaped += "\xe2\x96\x81"; else escaped += c;
            }
            llm_tokenizer_spm_session session(vocab);
            session.tokenize(escaped, out);
            is_prev_special = false;
        }
        for (size_t i = 0; i < out.size(); ++i) std::printf(i ? " %d" : "%d", out[i]);
        std::printf("\n");
    }
    return 0;
}
"""


def verbatim(vocab_cpp):
    src = open(vocab_cpp, encoding="utf-8").read()
    start = src.index("struct llm_tokenizer {")
    session = src.index("struct llm_tokenizer_spm_session {")
    end = src.index("\n};\n", session) + 4
    return src[start:end]


def texts(tokens, types, n, seed):
    rng = random.Random(seed)
    normal = [t for t, ty in zip(tokens, types) if ty == 1]
    extras = [
        " ", "  ", "   ", "\n", "\t", "\n\n", "    ", "            ", "ab", "aaa", "ababa", "=====",
        "-----", "0", "123", "3.14", "é", "e\u0301", "日本語", "한국어", "🦙", "🚀", "\U0010FFFD",
        "\x7f", "ـ", "ﷺ", "'s", "''", "...", "___", "\r\n", "Hello", "world", " the", "ing",
    ]
    # The vocabulary's user-defined tokens (Phi-3's "</s>") are split out by both sides.
    # Control tokens are not: llama.cpp's test tokenizes them as text, tern never does.
    extras += [t for t, ty in zip(tokens, types) if ty == 4]
    out = [" " * k + "x" for k in range(1, 40)] + ["x" + " " * k for k in range(1, 20)]
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.3:
                parts.append(rng.choice(extras))
            elif r < 0.35:
                c = chr(rng.randint(0xA0, 0x2FFFF))
                while unicodedata.category(c) in ("Cn", "Cs"):
                    c = chr(rng.randint(0xA0, 0x2FFFF))
                parts.append(c)
            else:
                parts.append(rng.choice(normal).replace("\u2581", " "))
        out.append("".join(parts))
    return [t for t in out if "\0" not in t]


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    llama_dir, out_path, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
    src = os.path.join(llama_dir, "src")
    doc = {
        "source": "llama.cpp src/llama-vocab.cpp llm_tokenizer_spm_session (llama-cpp-python "
        "0.3.36 sdist), add_space_prefix on, no special tokens; made by scripts/llama_cpp_spm.py",
        "vocabs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        code = DRIVER_HEAD + verbatim(os.path.join(src, "llama-vocab.cpp")) + DRIVER_MAIN
        exe = llama_cpp_pretok.compile_driver(src, tmp, "spm", code)
        for seed, spec in enumerate(specs):
            name, rest = spec.split("=", 1)
            path, n = rest.rsplit(":", 1)
            r = GGUFReader(path)
            f = r.fields
            tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode("utf-8")
                      for i in f["tokenizer.ggml.tokens"].data]
            scores = [float(f["tokenizer.ggml.scores"].parts[i][0])
                      for i in f["tokenizer.ggml.scores"].data]
            types = [int(f["tokenizer.ggml.token_type"].parts[i][0])
                     for i in f["tokenizer.ggml.token_type"].data]
            all_texts = texts(tokens, types, int(n), seed)
            paths = [os.path.join(tmp, x) for x in ("tokens.bin", "scores.txt", "texts.bin", "types.txt")]
            llama_cpp_pretok.write_nul(paths[0], tokens)
            with open(paths[1], "w") as g:
                g.write("\n".join(repr(s) for s in scores) + "\n")
            llama_cpp_pretok.write_nul(paths[2], all_texts)
            with open(paths[3], "w") as g:
                g.write("\n".join(str(t) for t in types) + "\n")
            general = f["general.name"].contents().lower() if "general.name" in f else ""
            phi3 = "phi-3" in general or "phi3" in general
            lines = subprocess.run([exe, *paths, "1" if phi3 else "0"], check=True,
                                   capture_output=True).stdout
            ids = [[int(x) for x in line.split()] for line in lines.decode().split("\n")[:-1]]
            assert len(ids) == len(all_texts), name
            doc["vocabs"][name] = {"texts": all_texts, "ids": ids}
            print(f"{name}: {len(all_texts)} texts")
    llama_cpp_pretok.write_json(doc, out_path)


if __name__ == "__main__":
    main()
