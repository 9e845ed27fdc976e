#!/usr/bin/env python3
"""Reference data for the rvllm-tokenizer crate.

Two jobs:

  corpus (default)
      Tokenizes a fixed corpus of strings with llama.cpp (through
      llama-cpp-python, vocab_only) and writes strings, ids and detokenized
      text, plus chat-template renderings made with jinja2 the way
      HF transformers / llama-cpp-python render them, to
      tests/reference/tokenizer_corpus.json (committed).

  --dump-spec PATH
      Reads the tokenizer metadata of the GGUF file (tokens, token types,
      merges, special ids, add_bos/add_eos, pre-tokenizer, chat template) and
      writes it as JSON in the shape of rvllm_tokenizer::TokenizerSpec.  The
      Rust reference test loads it from $RVLLM_TOKENIZER_SPEC_JSON.  This file
      is large and is NOT committed.

The GGUF metadata is read with a small self-contained reader below (only the
key/value section is parsed), so the `gguf` package is not needed.

Usage:
  python3 scripts/make_tokenizer_reference.py [--model M.gguf] [--out tests/reference/tokenizer_corpus.json]
  python3 scripts/make_tokenizer_reference.py --model M.gguf --dump-spec /tmp/spec.json
"""

import argparse
import json
import os
import random
import struct
import sys

DEFAULT_MODEL = os.path.expanduser(
    "~/.cache/rvllm/models/SmolLM2-135M-Instruct.Q4_1.gguf"
)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "reference", "tokenizer_corpus.json")

# --------------------------------------------------------------------------
# Minimal GGUF metadata reader
# --------------------------------------------------------------------------

_SCALARS = {
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}
_T_STRING = 8
_T_ARRAY = 9


class _Reader:
    def __init__(self, f):
        self.f = f

    def read(self, n):
        b = self.f.read(n)
        if len(b) != n:
            raise ValueError("unexpected end of GGUF file")
        return b

    def scalar(self, fmt):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self):
        n = self.scalar("<Q")
        return self.read(n).decode("utf-8", errors="surrogateescape")

    def value(self, vtype):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _T_STRING:
            return self.string()
        if vtype == _T_ARRAY:
            etype = self.scalar("<I")
            n = self.scalar("<Q")
            return [self.value(etype) for _ in range(n)]
        raise ValueError(f"unknown GGUF value type {vtype}")


def read_gguf_metadata(path):
    with open(path, "rb") as f:
        r = _Reader(f)
        if r.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        version = r.scalar("<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF v{version} not supported")
        _n_tensors = r.scalar("<Q")
        n_kv = r.scalar("<Q")
        kv = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = r.scalar("<I")
            kv[key] = r.value(vtype)
        return kv


# llama.cpp: pre-tokenizer names whose default add_bos is true when the GGUF
# has no tokenizer.ggml.add_bos_token key.
_LLAMA3_PRE = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral"}


def spec_from_gguf(path):
    kv = read_gguf_metadata(path)
    model = kv.get("tokenizer.ggml.model")
    pre = kv.get("tokenizer.ggml.pre")

    def opt(key):
        v = kv.get(key)
        return int(v) if v is not None else None

    add_bos = kv.get("tokenizer.ggml.add_bos_token")
    if add_bos is None:
        add_bos = model == "llama" or (pre in _LLAMA3_PRE)
    add_eos = kv.get("tokenizer.ggml.add_eos_token")
    if add_eos is None:
        add_eos = False
    tokens = kv.get("tokenizer.ggml.tokens") or []
    types = kv.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    return {
        "model": model,
        "pre": pre,
        "tokens": tokens,
        "token_types": [int(t) for t in types],
        "merges": kv.get("tokenizer.ggml.merges") or [],
        "bos_token_id": opt("tokenizer.ggml.bos_token_id"),
        "eos_token_id": opt("tokenizer.ggml.eos_token_id"),
        "unk_token_id": opt("tokenizer.ggml.unknown_token_id"),
        "pad_token_id": opt("tokenizer.ggml.padding_token_id"),
        "add_bos": bool(add_bos),
        "add_eos": bool(add_eos),
        "chat_template": kv.get("tokenizer.chat_template"),
    }


# --------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------


def build_corpus():
    c = []
    add = c.append

    # empty and trivial
    for s in ["", " ", "  ", "\n", "\t", "\r\n", "a", "A", ".", "0"]:
        add(s)

    # plain English, contractions
    for s in [
        "Hello world",
        "Hello, world!",
        " Hello world",
        "Hello World!!!",
        "The quick brown fox jumps over the lazy dog.",
        "It's a test. Don't panic, we're fine; they've gone, I'm here, you'll see, he'd know.",
        "IT'S DON'T WE'RE THEY'VE I'M YOU'LL HE'D",
        "it's it't it're it've it'm it'll it'd it'x",
        "'s 't 're 've 'm 'll 'd",
        "rock 'n' roll",
        "O'Neil's book",
        "''quoted'' and \"double\" `back`",
        "hello\u2019s curly apostrophe",
        "Mr. Smith went to Washington D.C. on Jan. 5th, 2021.",
        "e.g. i.e. etc. vs.",
        "ALLCAPS lowercase MiXeD CamelCase snake_case kebab-case",
        "supercalifragilisticexpialidocious",
        "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    ]:
        add(s)

    # digits of many lengths
    for n in range(1, 26):
        add("".join(str((i * 7 + 3) % 10) for i in range(n)))
    for s in [
        "3.14159265358979",
        "1,000,000",
        "1e10 2E-5 0x1F 0b1010 0o777",
        "-42 +17 ±3",
        "Call 555-123-4567 now",
        "version 1.2.3-rc.4+build.5",
        "2024-01-15T10:30:00Z",
        "a1b2c3d4",
        "abc123def456",
        " 123 456 7890",
        "٣٤٥ ١٢ (Arabic-Indic digits)",
        "१२३ (Devanagari digits)",
        "½ ⅓ ¼ ² ³ ① ② Ⅻ",
        "１２３ fullwidth",
        "$100.00 €50 £20 ¥1000 ₹500",
        "100% 50‰",
    ]:
        add(s)

    # whitespace runs
    for s in [
        "a b",
        "a  b",
        "a   b",
        "a    b",
        "a\tb",
        "a\t\tb",
        "a\nb",
        "a\n\nb",
        "a\n\n\nb",
        "a\r\nb",
        "  leading",
        "trailing  ",
        "   both   ",
        "\t\tindented",
        "line1\nline2\n",
        "\n\n\n",
        "    ",
        "        eight",
        " \t \n mixed \r\n\t ",
        "a \nb",
        "a\n b",
        "a\u00a0b (nbsp)",
        "a\u2003b (em space)",
        "a\u3000b (ideographic space)",
        "a\u200bb (zero width space)",
        "\x0bvertical\x0cform",
        "tabs\tin\tthe\tmiddle\t",
        "x" + " " * 17 + "y",
        "\n" * 9 + "z",
    ]:
        add(s)

    # punctuation
    for s in [
        "!@#$%^&*()_+-=[]{}|;':\",./<>?",
        "...",
        "?!?!",
        "--- === ***",
        "(parenthesized) [bracketed] {braced} <angled>",
        "a,b;c:d.e!f?g",
        "«guillemets» „quotes“ ‘single’ “double”",
        "—em dash– en dash… ellipsis",
        "#hashtag @mention",
        "~tilde^caret`backtick",
        "<|not_special|> <|im_start (incomplete",
        "<s> </s> <unk> <pad>",
    ]:
        add(s)

    # code
    for s in [
        "def foo(x):\n    return x + 1\n",
        "fn main() {\n    println!(\"Hello, world!\");\n}\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
        "#include <stdio.h>\nint main(void) { return 0; }",
        "const x = () => { return `template ${y}`; };",
        "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
        "<html><body><div class=\"x\">Hi</div></body></html>",
        "{\"key\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
        "x = [i**2 for i in range(10) if i % 2 == 0]",
        "if __name__ == \"__main__\":\n    main()",
        "    def method(self, *args, **kwargs) -> None:\n        pass",
        "git commit -m \"fix: handle edge case\" && git push origin main",
        "$ ls -la /usr/local/bin | grep -v '^d'",
        "regex: ^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}$",
        "https://example.com/path?query=1&other=two#frag",
        "C:\\Users\\name\\Documents\\file.txt",
        "// comment\n/* block\n   comment */",
        "matrix[i][j] = matrix[i-1][j-1] + 1;",
        "a->b; c::d; e=>f; g!=h; i<=j; k>=l; m&&n; o||p",
        "```python\nprint('hi')\n```",
    ]:
        add(s)

    # unicode / scripts
    for s in [
        "café naïve résumé",
        "Ünïcödé",
        "Ελληνικά γράμματα",
        "Русский текст, пример.",
        "Українська мова",
        "עברית מימין לשמאל",
        "العربية من اليمين إلى اليسار",
        "हिन्दी भाषा",
        "বাংলা",
        "ไทย ภาษา",
        "한국어 텍스트입니다",
        "日本語のテキストです。",
        "カタカナ ひらがな 漢字",
        "中文文本，这是一个测试。",
        "繁體中文測試",
        "我爱北京天安门",
        "ᚠᚢᚦᚨᚱᚲ runes",
        "Tiếng Việt có dấu",
        "Türkçe ğüşıöç İ",
        "Ærøskøbing Ångström",
        "straße STRASSE",
        "ǅ ǈ ǋ titlecase",
        "e\u0301 combining acute",
        "a\u0308\u0304 stacked marks",
        "Zalgo: Z\u0351\u0352\u0353a\u0354\u0355l\u0356g\u0357o",
        "mixed English and 中文 and русский and عربي",
        "hello世界123мир!",
        "한글English日本語",
        "\u202eRTL override\u202c",
        "\ufeffBOM at start",
        "replacement \ufffd char",
        "nul\x00byte",
        "control \x01\x02\x1f chars",
        "\u00ad soft hyphen",
        "math: ∀x∈ℝ, ∃y: x²+y²=1 → √2 ≈ 1.414",
        "arrows ← ↑ → ↓ ⇒ ⇔",
        "box ┌─┐│└┘",
        "𝕳𝖊𝖑𝖑𝖔 𝓦𝓸𝓻𝓵𝓭",
        "ℌ𝔢𝔩𝔩𝔬",
        "Ⓐⓑⓒ",
        "\U00020000\U0002a6d6 CJK ext B",
        "\U0001d11e musical symbol",
    ]:
        add(s)

    # emoji
    for s in [
        "😀",
        "😀😃😄😁",
        "I love 🍕 and 🍔!",
        "👍🏽 skin tone",
        "👨‍👩‍👧‍👦 family ZWJ",
        "🏳️‍🌈 flag",
        "🇺🇸🇬🇧🇯🇵 regional indicators",
        "❤️ heart with VS16",
        "🦙.cpp",
        "emoji🎉at🎉boundaries🎉",
        " 🤖",
        "🧑🏿‍🚀",
        "#️⃣ keycap",
    ]:
        add(s)

    # special tokens inline (parse_special = true)
    for s in [
        "<|im_start|>user\nhi<|im_end|>",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|>",
        "text<|endoftext|>more text",
        "<|im_end|><|im_end|>",
        " <|im_start|> spaced <|im_end|> ",
        "<|im_start|><|im_start|>",
        "before<|im_start|>",
        "<|im_end|>after",
        "<|im_start|>assistant\n```python\nprint(1)\n```<|im_end|>",
        "partial <|im_sta and <|im_end",
        "<|IM_START|> wrong case",
        "<repo_name>rvllm<file_sep>src/main.rs",
        "<filename>a.py<gh_stars>100",
        "<issue_start><issue_comment><issue_closed>",
        "<jupyter_start><jupyter_text><jupyter_code><jupyter_output><empty_output>",
        "<commit_before>x<commit_msg>y<commit_after>z<reponame>",
    ]:
        add(s)

    # generated: number formats, mixed spacing
    for n in [1, 2, 3, 4, 5, 10, 100]:
        add(" " * n + "x")
        add("x" + "\n" * n)
    for k in range(10):
        add(f"Item {k}: {k * 1234567 % 100000} units at ${k * 3.25:.2f}")
    rng = random.Random(1234)
    pools = [
        "abcdefghijklmnopqrstuvwxyz",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " \t\n",
        ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
        "éèêëàâäôöûüçñß",
        "αβγδεζηθλμπσφψω",
        "абвгдежзийклмнопрстуфхцчшщыэюя",
        "的一是不了人我在有他这为之大来以个中上们",
        "あいうえおかきくけこアイウエオ",
        "가나다라마바사아자차카타파하",
        "😀😂🥰😎🤔🙈🚀🌍🔥✨💯🎉",
    ]
    for _ in range(40):
        n = rng.randint(1, 40)
        s = "".join(rng.choice(rng.choice(pools)) for _ in range(n))
        add(s)
    # contractions after various letters / cases
    for w in ["he", "she", "it", "they", "you", "I", "we", "HE", "Bob"]:
        for ctr in ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL"]:
            if len(c) % 3 == 0:
                add(f"{w}{ctr} fine")
    # characters whose byte tokens the SmolLM2 vocabulary lacks (0x04, 0x06,
    # 0x13, 0x14, 0x16, 0x1d): llama.cpp drops them and does not merge across
    for s in [
        "a\x16b \x06\u2042 \x13\n x\x1dy",
        "he\x16llo wor\x04ld",
        " \x14're",
        "\x13\x14\x16",
    ]:
        add(s)
    # code points assigned after Unicode 15.1 (llama.cpp's tables): not
    # letters / numbers for llama.cpp
    for s in [
        "\U00013460's x\U00016D70\U00016D71's",
        "\U0002EBF0's \U0001E4D0's \U00010D4A're",
        "\U00013460\U00013461 and 12\U00016D7034",
    ]:
        add(s)
    # random strings over wide Unicode ranges
    for s in fuzz_corpus(60, seed=42):
        add(s)
    # very long strings
    para = (
        "The SmolLM2 model family is small but capable. It handles English text, "
        "code like `x = f(y) + 42`, numbers such as 3.14159 and 1,234,567, and "
        "even some 中文, русский, and emoji 🚀🔥. "
    )
    add(para * 60)
    add("a" * 3000)
    add("1234567890" * 200)
    add(" " * 500 + "end")
    add("\n\t" * 300)
    add("😀" * 400)
    add("日本語" * 300)

    seen = set()
    out = []
    for s in c:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


CHAT_CASES = [
    {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "add_generation_prompt": True,
    },
    {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "add_generation_prompt": False,
    },
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me a joke.\nA short one."},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "user", "content": "  leading and trailing spaces  "},
            {"role": "assistant", "content": "ok 👍 日本語"},
        ],
        "add_generation_prompt": False,
    },
    {"messages": [], "add_generation_prompt": True},
]


# A template exercising Jinja / Python features that real chat templates use
# (namespace, loop filters, Python string methods, raise_exception, filter
# precedence), rendered by jinja2 for comparison with minijinja.
FEATURE_TEMPLATE = """{%- set ns = namespace(sys='') -%}
{%- for m in messages -%}
  {%- if m['role'] == 'system' -%}{%- set ns.sys = m['content'].strip() -%}{%- endif -%}
{%- endfor -%}
{{ bos_token }}
{%- if ns.sys %}[SYS]{{ ns.sys | upper }} ({{ ns.sys | length }} chars)[/SYS]
{% endif %}
{%- for m in messages if m.role != 'system' -%}
  {%- if m.role not in ['user', 'assistant'] -%}{{ raise_exception('bad role ' + m.role) }}{%- endif -%}
  {%- if (loop.index0 % 2 == 0) != (m.role == 'user') -%}{{ raise_exception('roles must alternate user/assistant') }}{%- endif -%}
  <{{ m.role | title }}>{{ m.content.split('\\n') | join(' / ') }}
  {%- if m.content.startswith('Q:') %} (question){% endif %}
  {{- '|' + m.content.replace('a', 'A').lstrip() | trim + '|' }}</{{ m.role }}>{{ '\\n' if not loop.last }}
{%- endfor %}
{% if add_generation_prompt %}<Assistant>{% else %}{{ eos_token }}{% endif %}"""

FEATURE_CASES = [
    {
        "messages": [
            {"role": "system", "content": "  Be nice.  "},
            {"role": "user", "content": "Q: a\nb"},
            {"role": "assistant", "content": "  banana "},
            {"role": "user", "content": "thanks"},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [{"role": "user", "content": "hello"}],
        "add_generation_prompt": False,
    },
    {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [{"role": "tool", "content": "x"}],
        "add_generation_prompt": True,
    },
]


def render_chat_jinja2(template, messages, add_generation_prompt, bos, eos):
    """Render like HF transformers / llama-cpp-python's Jinja2ChatFormatter."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols"],
    )
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos,
        eos_token=eos,
    )


def token_to_piece(vocab, token, special):
    """llama_token_to_piece with a buffer large enough for any token.

    (llama-cpp-python's own Llama.detokenize uses a 32-byte buffer and
    silently truncates longer pieces, e.g. long runs of spaces.)"""
    import ctypes
    import llama_cpp

    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
        if n < 0:
            size = -n + 1
            continue
        return buf.raw[:n]


def detokenize(vocab, ids, special):
    """Concatenated token pieces, as llama.cpp's common_token_to_piece does."""
    return b"".join(token_to_piece(vocab, t, special) for t in ids)


def fuzz_corpus(n, seed=0):
    """Random strings over wide Unicode ranges (for ad-hoc checks, not committed)."""
    rng = random.Random(seed)
    ranges = [
        (0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0x30, 0x39), (0x0, 0x20),
        (0x80, 0x2FF), (0x300, 0x36F), (0x370, 0x10FF), (0x1100, 0x1FFF),
        (0x2000, 0x206F), (0x2070, 0x2FFF), (0x3000, 0x9FFF), (0xA000, 0xD7FF),
        (0xE000, 0xFFFD), (0x10000, 0x1FFFF), (0x1F300, 0x1FAFF), (0x20000, 0x2FFFF),
        (0xE0000, 0xE01EF),
    ]
    words = [" ", "  ", "\n", "\t", "'s", "'T", "'re", "'LL", "<|im_start|>", "<|im_end|>",
             "123", "٣", "１", "...", " \n ", "\u2028", "\u0085", "\xa0"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, rng.choice([30, 30, 300]))):
            if rng.random() < 0.3:
                parts.append(rng.choice(words))
            else:
                lo, hi = rng.choice(ranges)
                cp = rng.randint(lo, hi)
                if 0xD800 <= cp <= 0xDFFF:
                    cp = 0x41
                parts.append(chr(cp))
        out.append("".join(parts))
    return out


def write_json_one_item_per_line(doc, f):
    """JSON with one line per top-level key, and one line per list item."""
    dumps = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
    f.write("{\n")
    keys = list(doc)
    for i, k in enumerate(keys):
        v = doc[k]
        sep = "," if i + 1 < len(keys) else ""
        if isinstance(v, list):
            f.write(f" {dumps(k)}: [\n")
            for j, item in enumerate(v):
                f.write("  " + dumps(item) + ("," if j + 1 < len(v) else "") + "\n")
            f.write(f" ]{sep}\n")
        else:
            f.write(f" {dumps(k)}: {dumps(v)}{sep}\n")
    f.write("}\n")


def make_corpus(model_path, out_path, fuzz=0, seed=0):
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    spec = spec_from_gguf(model_path)

    entries = []
    for s in fuzz_corpus(fuzz, seed) if fuzz else build_corpus():
        ids = llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)
        detok = detokenize(vocab, ids, special=False)
        detok_sp = detokenize(vocab, ids, special=True)
        entries.append(
            {
                "text": s,
                "ids": ids,
                "detokenize": detok.decode("utf-8", errors="replace"),
                "detokenize_special": detok_sp.decode("utf-8", errors="replace"),
            }
        )

    # encode with add_special_tokens (BOS/EOS per the model's flags)
    with_bos = []
    for s in ["Hello world", "", "<|im_start|>user\nhi<|im_end|>"]:
        with_bos.append(
            {"text": s, "ids": llm.tokenize(s.encode("utf-8"), add_bos=True, special=True)}
        )

    # per-token pieces (token_to_piece, special=True), for decode checks
    n_vocab = llm.n_vocab()
    model = llm._model
    vocab_info = {
        "n_vocab": n_vocab,
        "bos": llm.token_bos(),
        "eos": llm.token_eos(),
        "add_bos": bool(model.add_bos_token()) if hasattr(model, "add_bos_token") else None,
        "llama_cpp_python_version": llama_cpp.__version__,
    }

    template = spec["chat_template"]
    bos = spec["tokens"][spec["bos_token_id"]] if spec["bos_token_id"] is not None else ""
    eos = spec["tokens"][spec["eos_token_id"]] if spec["eos_token_id"] is not None else ""
    chats = []
    if template:
        for case in CHAT_CASES:
            rendered = render_chat_jinja2(
                template, case["messages"], case["add_generation_prompt"], bos, eos
            )
            chats.append({**case, "rendered": rendered})

    feature_cases = []
    for case in FEATURE_CASES:
        try:
            rendered = render_chat_jinja2(
                FEATURE_TEMPLATE, case["messages"], case["add_generation_prompt"], bos, eos
            )
            feature_cases.append({**case, "rendered": rendered})
        except Exception as e:  # raise_exception -> TemplateError
            feature_cases.append({**case, "error": str(e)})

    # Cross-check: llama-cpp-python's own chat formatter renders the same.
    try:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    except ImportError:
        Jinja2ChatFormatter = None
    if Jinja2ChatFormatter is not None and template:
        for case in chats:
            fmt = Jinja2ChatFormatter(
                template=template,
                eos_token=eos,
                bos_token=bos,
                add_generation_prompt=case["add_generation_prompt"],
            )
            got = fmt(messages=case["messages"]).prompt
            if got != case["rendered"]:
                raise SystemExit(f"llama-cpp-python formatter disagrees with jinja2: {got!r}")

    doc = {
        "model_file": os.path.basename(model_path),
        "generator": "scripts/make_tokenizer_reference.py (llama-cpp-python, jinja2)",
        "tokenize_args": {"add_bos": False, "special": True},
        "vocab": vocab_info,
        "corpus": entries,
        "with_bos": with_bos,
        "chat": chats,
        "feature_template": FEATURE_TEMPLATE,
        "feature_chat": feature_cases,
    }
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        write_json_one_item_per_line(doc, f)
    print(f"wrote {len(entries)} corpus strings, {len(chats)} chat cases -> {out_path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument(
        "--dump-spec",
        metavar="PATH",
        help="write the GGUF tokenizer spec as JSON to PATH and exit",
    )
    ap.add_argument(
        "--fuzz",
        type=int,
        default=0,
        metavar="N",
        help="use N random strings instead of the fixed corpus (for ad-hoc checks; "
        "point RVLLM_TOKENIZER_CORPUS at the output)",
    )
    ap.add_argument("--seed", type=int, default=0, help="random seed for --fuzz")
    args = ap.parse_args()
    if args.dump_spec:
        spec = spec_from_gguf(args.model)
        with open(args.dump_spec, "w", encoding="utf-8") as f:
            json.dump(spec, f, ensure_ascii=False)
        print(
            f"wrote spec: model={spec['model']} pre={spec['pre']} "
            f"tokens={len(spec['tokens'])} merges={len(spec['merges'])} -> {args.dump_spec}"
        )
        return 0
    make_corpus(args.model, args.out, args.fuzz, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
