#!/usr/bin/env python3
"""Record how llama.cpp itself splits text for each `gpt2` pre-tokenizer tern reads.

tern reproduces llama.cpp's pre-tokenizer regexes with fancy-regex, while llama.cpp runs them
through its own engine (`src/unicode.cpp`: hand-written matchers for some regexes, std::regex
over a "collapsed" text with its own Unicode category tables for the rest). The vocab tests
(`ggml-vocab-*.gguf.inp`) cover 46 texts; this script compares the engines on many more.

It extracts, from a llama.cpp source tree:
  - the regex list of every `LLAMA_VOCAB_PRE_TYPE_*` case in `llm_tokenizer_bpe`'s
    constructor (copied verbatim into a generated C++ driver, so C++ reads the literals),
  - which `tokenizer.ggml.pre` names map to which type (`llama_vocab::impl::load`),
compiles the driver with llama.cpp's `unicode.cpp` and `unicode-data.cpp`, generates
deterministic test texts, and writes for every distinct regex list and text the byte lengths
of the pieces `unicode_regex_split` returns. `crates/tern-model/tests/gguf_tokenizer.rs`
(`pre_tokenizers_split_like_llama_cpp`) checks tern's pieces against that file.

    python3 scripts/llama_cpp_pretok.py /path/to/llama.cpp \
        crates/tern-model/tests/fixtures/vocab/pretok-llama.cpp.json

The committed file was made from the llama.cpp copy in the llama-cpp-python 0.3.36 sdist
(`pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36`, then
`vendor/llama.cpp`). Needs a C++17 compiler (`CXX`, default g++).
"""

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import unicodedata

# The `tokenizer.ggml.pre` names tern reads (gguf_tokenizer.rs, GPT2_PRE_TOKENIZERS). "gpt2"
# is tern's alias of "gpt-2" (not a llama.cpp name) and is checked as "gpt-2".
NAMES = [
    "llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
    "dbrx", "smaug-bpe",
    "gpt-2", "phi-2", "mpt", "olmo",
    "qwen2", "deepseek-r1-qwen", "stablelm2",
    "qwen35",
    "starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b",
    "falcon",
    "deepseek-llm",
    "deepseek-coder",
    "default",
]


def strip_comments(src):
    """C++ source without // and /* */ comments, string literals left intact."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if c == '"':
            j = i + 1
            while src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append(src[i : j + 1])
            i = j + 1
        elif c == "'":
            j = i + 1
            while src[j] != "'":
                j += 2 if src[j] == "\\" else 1
            out.append(src[i : j + 1])
            i = j + 1
        elif src.startswith("//", i):
            i = src.index("\n", i)
        elif src.startswith("/*", i):
            i = src.index("*/", i) + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def balanced(src, start):
    """The index just past the brace block opening at src[start] == '{'."""
    depth, i = 0, start
    while True:
        c = src[i]
        if c == '"':
            i += 1
            while src[i] != '"':
                i += 2 if src[i] == "\\" else 1
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


def extract(vocab_cpp):
    src = strip_comments(open(vocab_cpp, encoding="utf-8").read())
    # Regex lists: the constructor's switch.
    ctor = src.index("llm_tokenizer_bpe(const llama_vocab & vocab)")
    sw = src.index("switch", ctor)
    body_start = src.index("{", sw)
    body = src[body_start : balanced(src, body_start)]
    regexes, labels = {}, []
    pos = 0
    token = re.compile(r"case\s+(LLAMA_VOCAB_PRE_TYPE_\w+)\s*:|default\s*:|regex_exprs\s*=\s*\{")
    while True:
        m = token.search(body, pos)
        if not m:
            break
        if m.group(0).startswith("case"):
            labels.append(m.group(1))
            pos = m.end()
        elif m.group(0).startswith("default"):
            labels.append("DEFAULT")
            pos = m.end()
        else:
            end = balanced(body, m.end() - 1)
            init = body[m.end() - 1 : end]
            for label in labels:
                regexes[label] = init
            labels = []
            pos = end
    # Name -> type: `if (tokenizer_pre == "a" || ...) { pre_type = X;`.
    types = {}
    for m in re.finditer(r"if\s*\(([^{}]*?)\)\s*\{\s*pre_type\s*=\s*(LLAMA_VOCAB_PRE_TYPE_\w+)\s*;", src):
        for name in re.findall(r'tokenizer_pre\s*==\s*"([^"]+)"', m.group(1)):
            types.setdefault(name, m.group(2))
    return regexes, types


DRIVER = r"""
#include "unicode.h"
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

struct Pre { const char * name; std::vector<std::string> re; };
static const std::vector<Pre> kPres = {
%s
};

// Reads NUL-separated texts from argv[1]; prints one line per (type, text): the byte lengths
// of the pieces (each byte-encoded codepoint stands for one byte of the text).
int main(int argc, char ** argv) {
    std::ifstream in(argv[1], std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::string> texts;
    size_t start = 0;
    for (size_t i = 0; i < all.size(); ++i) {
        if (all[i] == '\0') { texts.push_back(all.substr(start, i - start)); start = i + 1; }
    }
    for (const auto & p : kPres) {
        for (const auto & t : texts) {
            std::printf("%%s", p.name);
            for (const auto & piece : unicode_regex_split(t, p.re, true)) {
                size_t n = 0;
                for (unsigned char c : piece) n += (c & 0xC0) != 0x80;
                std::printf(" %%zu", n);
            }
            std::printf("\n");
        }
    }
    return 0;
}
"""


# C++ shared by the tokenizer drivers (llama_cpp_bpe.py, llama_cpp_spm.py), placed after the
# code they copy verbatim from llama-vocab.cpp: the transcription of tokenizer_st_partition
# and the file readers their main()s use.
CPP_AFTER_VERBATIM = r"""
// ---- end of the verbatim part ----

// llama_vocab::impl::tokenizer_st_partition with parse_special = false: user-defined tokens
// (type 4), longest first, are split out of the raw text before tokenization; a token with
// the RSTRIP attribute also takes the whitespace after it. (llama.cpp sets LSTRIP/RSTRIP
// only for a few models by name; `rstrip` holds Phi-3's rule when it applies.)
struct Frag { bool is_token; llama_token id; std::string text; };
static std::vector<Frag> partition(const std::string & raw, const std::vector<std::string> & tokens,
                                   const std::vector<int> & types, const std::vector<bool> & rstrip) {
    std::vector<llama_token> special;
    for (size_t i = 0; i < tokens.size(); ++i) if (types[i] == 4) special.push_back((llama_token) i);
    std::stable_sort(special.begin(), special.end(), [&](llama_token a, llama_token b) {
        return tokens[a].size() > tokens[b].size();
    });
    std::vector<Frag> frags;
    if (!raw.empty()) frags.push_back({ false, LLAMA_TOKEN_NULL, raw });
    for (llama_token id : special) {
        const std::string & t = tokens[id];
        std::vector<Frag> next;
        for (const auto & f : frags) {
            if (f.is_token) { next.push_back(f); continue; }
            size_t pos = 0;
            while (true) {
                size_t m = f.text.find(t, pos);
                if (m == std::string::npos) {
                    if (pos < f.text.size()) next.push_back({ false, LLAMA_TOKEN_NULL, f.text.substr(pos) });
                    break;
                }
                if (m > pos) next.push_back({ false, LLAMA_TOKEN_NULL, f.text.substr(pos, m - pos) });
                next.push_back({ true, id, "" });
                pos = m + t.size();
                if (rstrip[id]) {
                    while (pos < f.text.size() && isspace((unsigned char) f.text[pos])) pos++;
                }
            }
        }
        frags = next;
    }
    return frags;
}

static std::vector<std::string> split_nul(const std::string & all) {
    std::vector<std::string> out;
    size_t start = 0;
    for (size_t i = 0; i < all.size(); ++i) {
        if (all[i] == '\0') { out.push_back(all.substr(start, i - start)); start = i + 1; }
    }
    return out;
}

static std::string slurp(const char * path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
"""


def compile_driver(src, tmp, name, code):
    """Writes `code` to tmp/name.cpp, compiles it with llama.cpp's unicode tables from `src`
    (its `src` directory) and returns the executable's path."""
    driver = os.path.join(tmp, name + ".cpp")
    with open(driver, "w", encoding="utf-8") as f:
        f.write(code)
    exe = os.path.join(tmp, name)
    cxx = os.environ.get("CXX", "g++")
    subprocess.run(
        [cxx, "-std=c++17", "-O1", "-I", src, driver,
         os.path.join(src, "unicode.cpp"), os.path.join(src, "unicode-data.cpp"), "-o", exe],
        check=True,
    )
    return exe


def write_nul(path, items):
    """Writes strings (UTF-8) or bytes, each followed by a NUL, as the drivers' `split_nul` reads."""
    with open(path, "wb") as f:
        for x in items:
            f.write((x.encode("utf-8") if isinstance(x, str) else bytes(x)) + b"\0")


def write_json(doc, path):
    """The fixtures' JSON form: ASCII, no spaces, one trailing newline."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")


def texts():
    """Deterministic texts mixing everything the regexes distinguish."""
    rng = random.Random(20261128)
    parts = [
        "Hello", "world", "HELLO", "x", "I", "a", "the", "naïve", "Äpfel", "Straße", "façade",
        "'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'ve", "'VE", "'m", "'M", "'ll", "'LL", "'lL",
        "'d", "'D", "'\u017f", "'\u212a", "'x", "''", "'", "\u2019s",
        "0", "7", "42", "123", "2024", "1234567", "3.14", "1,000", "٣٤٥", "१२३", "½", "²", "Ⅻ",
        " ", "  ", "   ", "    ", "\t", "\n", "\n\n", "\r\n", "\r", " \n", "\n ", "\u00a0", "\u3000",
        "\u2009", "\u200b", "\u2028", "\x0b", "\x0c", "\x85",
        ".", ",", "!", "?", "...", "!!!", "--", "-", "_", "__init__", "()", "[]", "{}", "<>", "<|>",
        "$", "+", "=", "^", "~", "|", "`", "@", "#", "%", "&", "*", "/", "\\", ":", ";", '"',
        "–", "—", "…", "«", "»", "¿", "¡", "§", "©", "®", "™", "€", "₽", "°", "±", "×", "÷",
        "\u00b5", "\u00ff", "\u01c5", "\u02bc", "\u02c8", "\u0345", "\u2126", "\u212a", "\u211d", "ﬁ", "Ａ", "ａ", "！", "，", "。", "、", "「", "」",
        "我想在", "apple", "工作", "天", "～", "한국어", "가", "日本語", "ひらがな", "カタカナ", "ｶﾀｶﾅ",
        "нещо", "Български", "Ελληνικά", "\u1f7d", "\u0390", "\u1fd3", "עברית", "العربية", "ـ", "हिन्दी", "ক্ষ", "ไทย",
        "កាន់តែ", "ພາສາ", "ქართული", "Հայերեն", "ᎠᏍᏗ", "𐐀", "𞤀", "ꙮ",
        "e\u0301", "a\u0308", "\u0301", "\u0300x", "n\u0303o",
        "🦙", "🚀", "😶‍🌫️", "✅", "👍🏽", "🇫🇷", "❤️", "\U0001F600",
        "\u0000", "\x01", "\x7f", "\ue000", "\U0010FFFD", "\ufeff", "\ufffd",
        "http://x.io/a?b=1", "a_b", "CamelCase", "snake_case", "x86_64", "v1.2.3", "i++", "a->b",
    ]
    out = [p for p in parts]
    for _ in range(700):
        k = rng.randint(1, 10)
        out.append("".join(rng.choice(parts) for _ in range(k)))
    # Random code points from every plane in use, assigned ones only (as Python's unicodedata
    # knows them): characters assigned in newer Unicode versions than llama.cpp's tables
    # (`unicode-data.cpp`) are categorised differently by the regex crate's newer tables.
    ranges = [(0x20, 0x7E), (0xA0, 0x2FFF), (0x3000, 0xD7FF), (0xE000, 0xFFFD),
              (0x10000, 0x1FFFF), (0x20000, 0x2FFFF), (0xE0000, 0xE01EF)]
    for _ in range(200):
        chars = []
        for _ in range(rng.randint(1, 12)):
            lo, hi = rng.choice(ranges)
            c = chr(rng.randint(lo, hi))
            while unicodedata.category(c) == "Cn":
                c = chr(rng.randint(lo, hi))
            chars.append(c)
            if rng.random() < 0.3:
                chars.append(rng.choice([" ", "a", "1", "'s", ".", "\n"]))
        out.append("".join(chars))
    # Whitespace runs before and after words, and at the ends.
    for n in range(1, 9):
        out += [" " * n + "x", "x" + " " * n, "x" + " " * n + "y", "\n" * n + " x", "x \t" * n]
    return [t for t in out if "\0" not in t]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    llama_dir, out_path = sys.argv[1], sys.argv[2]
    regexes, types = extract(os.path.join(llama_dir, "src", "llama-vocab.cpp"))
    types["default"] = "DEFAULT"
    # Types with the same regex list (LLAMA3 / DBRX / SMAUG, ...) are run once, under the
    # first type that has it.
    used, canonical, by_regexes = [], {}, {}
    for name in NAMES:
        ty = types.get(name)
        if ty is None or ty not in regexes:
            sys.exit(f"{name}: not found in llama-vocab.cpp (type {ty})")
        key = re.sub(r"\s+", " ", regexes[ty])
        if key not in by_regexes:
            by_regexes[key] = ty
            used.append(ty)
        canonical[name] = by_regexes[key]
    rows = ['    { "%s", %s },' % (ty, regexes[ty]) for ty in used]
    all_texts = texts()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(llama_dir, "src")
        exe = compile_driver(src, tmp, "pretok", DRIVER % "\n".join(rows))
        texts_path = os.path.join(tmp, "texts.bin")
        write_nul(texts_path, all_texts)
        lines = subprocess.run([exe, texts_path], check=True, capture_output=True).stdout
    splits = {ty: [] for ty in used}
    for line in lines.decode().splitlines():
        ty, *lens = line.split(" ")
        splits[ty].append([int(x) for x in lens])
    for ty in used:
        assert len(splits[ty]) == len(all_texts), ty
        for t, lens in zip(all_texts, splits[ty]):
            assert sum(lens) == len(t.encode("utf-8")), (ty, t)
    doc = {
        "source": "llama.cpp src/unicode.cpp unicode_regex_split, regexes and names from "
        "src/llama-vocab.cpp (llama-cpp-python 0.3.36 sdist); made by scripts/llama_cpp_pretok.py",
        "python_unicode": unicodedata.unidata_version,
        "types": {name: types[name] for name in NAMES},
        "regexes_of": canonical,
        "texts": all_texts,
        "splits": splits,
    }
    write_json(doc, out_path)
    print(f"{out_path}: {len(NAMES)} names, {len(used)} regex lists, {len(all_texts)} texts")


if __name__ == "__main__":
    main()
