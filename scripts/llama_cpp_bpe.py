#!/usr/bin/env python3
"""Record the token ids llama.cpp's own byte-level BPE tokenizer gives for generated texts.

The companion of `llama_cpp_spm.py` for `tokenizer.ggml.model = "gpt2"`: it compiles
llama.cpp's `llm_tokenizer_bpe` (the pre-tokenizer regex lists) and
`llm_tokenizer_bpe_session` (regex split, `ignore_merges`, rank-ordered merges, byte
fallback), copied verbatim from `src/llama-vocab.cpp`, with `unicode.cpp` and a small
stand-in for `llama_vocab` (token lookup, `bpe_ranks` filled as llama.cpp fills it, the
`pre_type` and `ignore_merges` that `llama_vocab::impl::load` sets for the file's
`tokenizer.ggml.pre`, both read from `llama-vocab.cpp`/`llama-vocab.h`), and a transcription
of `tokenizer_st_partition` for `parse_special = false` (user-defined tokens are split out
first, as in llama.cpp's vocab test). It runs it on texts
shared by all vocabularies (a subset of `llama_cpp_pretok.py`'s) and writes the ids;
`crates/tern-model/tests/gguf_tokenizer.rs` (`bpe_matches_llama_cpp_recorded_ids`) checks tern
against that file for each vocabulary found in `TERN_VOCAB_DIR`.

    python3 scripts/llama_cpp_bpe.py /path/to/llama.cpp OUT.json VOCAB.gguf ...

The committed `crates/tern-model/tests/fixtures/vocab/bpe-llama.cpp.json` was made from the
llama.cpp copy in the llama-cpp-python 0.3.36 sdist, with its `models/ggml-vocab-{llama-bpe,
gpt-2,mpt,qwen2,qwen35,starcoder,refact,command-r,falcon,deepseek-llm,deepseek-coder}.gguf`.
Needs gguf-py and a C++17 compiler (`CXX`, default g++).
"""

import os
import re
import subprocess
import sys
import tempfile

from gguf import GGUFReader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_cpp_pretok  # noqa: E402  (shared texts and C++ helpers)

HEAD = r"""
#include "unicode.h"
#include <cassert>
#include <cstdint>
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <queue>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

typedef int32_t llama_token;
#define LLAMA_TOKEN_NULL -1
#define GGML_ASSERT(x) assert(x)
#define LLAMA_LOG_WARN(...) ((void) 0)
#define LLAMA_LOG_INFO(...) ((void) 0)
enum llama_vocab_type { LLAMA_VOCAB_TYPE_NONE, LLAMA_VOCAB_TYPE_SPM, LLAMA_VOCAB_TYPE_BPE };

%(pre_enum)s

// The parts of llama_vocab that the BPE (and SPM) sessions use.
struct llama_vocab {
    struct token_data { std::string text; float score; };
    std::vector<token_data> id_to_token;
    std::unordered_map<std::string, llama_token> token_to_id;
    std::map<std::pair<std::string, std::string>, int> bpe_ranks;
    llama_vocab_pre_type pre_type = LLAMA_VOCAB_PRE_TYPE_DEFAULT;
    bool ignore_merges = false;

    llama_vocab_type get_type() const { return LLAMA_VOCAB_TYPE_BPE; }
    llama_vocab_pre_type get_pre_type() const { return pre_type; }
    bool get_ignore_merges() const { return ignore_merges; }
    bool get_add_bos() const { return false; }
    bool get_add_eos() const { return false; }
    llama_token token_bos() const { return LLAMA_TOKEN_NULL; }
    llama_token token_eos() const { return LLAMA_TOKEN_NULL; }
    llama_token text_to_token(const std::string & text) const {
        auto it = token_to_id.find(text);
        return it == token_to_id.end() ? LLAMA_TOKEN_NULL : it->second;
    }
    // llama_vocab::find_bpe_rank
    int find_bpe_rank(const std::string & token_left, const std::string & token_right) const {
        auto it = bpe_ranks.find(std::make_pair(token_left, token_right));
        return it == bpe_ranks.end() ? -1 : it->second;
    }
    uint32_t n_tokens() const { return (uint32_t) id_to_token.size(); }
    const token_data & get_token_data(llama_token id) const { return id_to_token.at(id); }
    llama_token byte_to_token(uint8_t ch) const { return token_to_id.at(std::string(1, (char) ch)); }
};

// ---- verbatim from llama.cpp src/llama-vocab.cpp ----
"""

MAIN = llama_cpp_pretok.CPP_AFTER_VERBATIM + r"""
// argv: tokens (NUL-separated), merges (NUL-separated), pre_type, ignore_merges, texts,
// token types (one per line).
int main(int argc, char ** argv) {
    llama_vocab vocab;
    const auto tokens = split_nul(slurp(argv[1]));
    std::vector<int> types;
    {
        std::ifstream in(argv[6]);
        int t;
        while (in >> t) types.push_back(t);
    }
    for (size_t i = 0; i < tokens.size(); ++i) {
        vocab.id_to_token.push_back({ tokens[i], 0.0f });
        vocab.token_to_id[tokens[i]] = (llama_token) i;
    }
    // As llama_vocab::impl::load fills bpe_ranks.
    const auto merges = split_nul(slurp(argv[2]));
    for (size_t i = 0; i < merges.size(); ++i) {
        const std::string & word = merges[i];
        std::string first, second;
        const size_t pos = word.find(' ', 1);
        if (pos != std::string::npos) {
            first = word.substr(0, pos);
            second = word.substr(pos + 1);
        }
        vocab.bpe_ranks.emplace(std::make_pair(first, second), (int) i);
    }
    vocab.pre_type = (llama_vocab_pre_type) std::stoi(argv[3]);
    vocab.ignore_merges = std::stoi(argv[4]) != 0;
    llm_tokenizer_bpe tokenizer(vocab);
    for (const auto & text : split_nul(slurp(argv[5]))) {
        std::vector<llama_token> out;
        llm_tokenizer_bpe_session session(vocab, tokenizer);
        for (const auto & f : partition(text, tokens, types, std::vector<bool>(tokens.size(), false))) {
            if (f.is_token) out.push_back(f.id); else session.tokenize(f.text, out);
        }
        for (size_t i = 0; i < out.size(); ++i) std::printf(i ? " %d" : "%d", out[i]);
        std::printf("\n");
    }
    return 0;
}
"""


def pre_settings(vocab_cpp, vocab_h):
    """name -> (enum value, ignore_merges) as llama_vocab::impl::load sets them."""
    hdr = open(vocab_h, encoding="utf-8").read()
    enum = hdr[hdr.index("enum llama_vocab_pre_type {") : hdr.index("};", hdr.index("enum llama_vocab_pre_type {")) + 2]
    values = {m.group(1): int(m.group(2)) for m in re.finditer(r"(LLAMA_VOCAB_PRE_TYPE_\w+)\s*=\s*(\d+)", enum)}
    src = llama_cpp_pretok.strip_comments(open(vocab_cpp, encoding="utf-8").read())
    load = src.index("if (tokenizer_pre.empty())")
    settings = {}
    for m in re.finditer(r"if\s*\(([^{}]*?)\)\s*\{([^{}]*)\}", src[load:]):
        body = m.group(2)
        t = re.search(r"pre_type\s*=\s*(LLAMA_VOCAB_PRE_TYPE_\w+)\s*;", body)
        if not t:
            continue
        ignore = bool(re.search(r"ignore_merges\s*=\s*true", body))
        for name in re.findall(r'tokenizer_pre\s*==\s*"([^"]+)"', m.group(1)):
            settings.setdefault(name, (values[t.group(1)], ignore))
    return enum, settings


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    llama_dir, out_path, vocabs = sys.argv[1], sys.argv[2], sys.argv[3:]
    src = os.path.join(llama_dir, "src")
    vocab_cpp = os.path.join(src, "llama-vocab.cpp")
    enum, settings = pre_settings(vocab_cpp, os.path.join(src, "llama-vocab.h"))
    code = open(vocab_cpp, encoding="utf-8").read()
    verbatim = code[code.index("struct llm_tokenizer {") : code.index("//\n// WPM tokenizer")]
    texts = llama_cpp_pretok.texts()[::5]
    doc = {
        "source": "llama.cpp src/llama-vocab.cpp llm_tokenizer_bpe_session (llama-cpp-python "
        "0.3.36 sdist), no special tokens; made by scripts/llama_cpp_bpe.py",
        "texts": texts,
        "vocabs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        exe = llama_cpp_pretok.compile_driver(src, tmp, "bpe", HEAD % {"pre_enum": enum} + verbatim + MAIN)
        texts_path = os.path.join(tmp, "texts.bin")
        llama_cpp_pretok.write_nul(texts_path, texts)
        for path in vocabs:
            name = os.path.basename(path)[len("ggml-vocab-"):-len(".gguf")]
            f = GGUFReader(path).fields
            pre = f["tokenizer.ggml.pre"].contents()
            value, ignore = settings[pre]
            for key, fname in (("tokenizer.ggml.tokens", "tokens.bin"), ("tokenizer.ggml.merges", "merges.bin")):
                llama_cpp_pretok.write_nul(os.path.join(tmp, fname), (f[key].parts[i] for i in f[key].data))
            with open(os.path.join(tmp, "types.txt"), "w") as g:
                t = f["tokenizer.ggml.token_type"]
                g.write("\n".join(str(int(t.parts[i][0])) for i in t.data) + "\n")
            lines = subprocess.run(
                [exe, os.path.join(tmp, "tokens.bin"), os.path.join(tmp, "merges.bin"),
                 str(value), str(int(ignore)), texts_path, os.path.join(tmp, "types.txt")],
                check=True, capture_output=True,
            ).stdout
            ids = [[int(x) for x in line.split()] for line in lines.decode().split("\n")[:-1]]
            assert len(ids) == len(texts), name
            doc["vocabs"][name] = {"pre": pre, "ignore_merges": ignore, "ids": ids}
            print(f"{name} ({pre}, ignore_merges={ignore}): {len(texts)} texts")
    llama_cpp_pretok.write_json(doc, out_path)


if __name__ == "__main__":
    main()
