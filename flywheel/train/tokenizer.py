"""Byte-level BPE tokenizer: trained on the deduplicated shards, or a local one, published.

    flywheel train tokenizer [--spec SPEC] [tokenizer.vocab_size=8192 ...]

``build_tokenizer(spec, inputs)`` publishes a versioned tokenizer directory (``save_pretrained``
files plus a verified manifest, see ``flywheel.core.artifacts``) under ``<data_dir>/tokenizer``.
With ``tokenizer.path`` unset it trains byte-level BPE (GPT-2 style: every byte is in the
initial alphabet, so any UTF-8 text round-trips and nothing is ever unknown) on at most
``tokenizer.max_docs`` documents streamed from the ``deduplicated_shards`` it is handed
(``inputs``, as ``flywheel.core.products.resolve_inputs`` reads them); with it set, it copies
that local tokenizer. Re-materializing with the same inputs and settings returns the published
version unchanged.

The chat template is ChatML with the assistant turn wrapped in ``{% generation %}`` so that
``return_assistant_tokens_mask`` (TRL's ``assistant_only_loss``) marks exactly what the model
must learn to write: the assistant content and its closing ``<|im_end|>``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from flywheel.core import artifacts
from flywheel.core import products as P
from flywheel.core.shards import ShardSet
from flywheel.core.spec import Spec

PRODUCT = P.TOKENIZER
INPUT = P.DEDUPLICATED

EOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: dict[str, str] = {
    "eos_token": EOS,
    "bos_token": EOS,  # GPT-2 convention: one document separator serves as both
    "pad_token": PAD,  # distinct from EOS so that padding never hides a real EOS label
    "im_start": IM_START,
    "im_end": IM_END,
}
# Trainer order fixes their ids: 0 endoftext, 1 pad, 2 im_start, 3 im_end.
_TRAINED_SPECIALS = [EOS, PAD, IM_START, IM_END]
# The tool-call tags (flywheel.loop.agents.toolcalls), one token each as in Qwen's vocabulary:
# byte-level BPE would spend 8 tokens on each, every agent turn. Added after training, not
# special, so ``decode(skip_special_tokens=True)`` keeps them and the parser sees the call.
TOOL_TAGS = ["<tool_call>", "</tool_call>"]

# ChatML. The assistant's content and its <|im_end|> sit inside {% generation %}, so the
# assistant mask covers what the model writes and stops on; the role header and the newline
# after <|im_end|> are the template's, not the model's. The explicit string literals (rather
# than template text) keep Jinja's whitespace handling from adding or eating newlines.
#
# Tool calling (what TRL's GRPOTrainer(environment_factory=...) requires of a template, see
# trl.chat_template_utils.supports_tool_calling): ``tools=`` opens the conversation with a
# system turn listing their JSON schemas (merged after a leading system message), in exactly
# the words of flywheel.loop.agents.toolcalls.system_prompt; an assistant turn's ``tool_calls``
# are written after its content as the ``<tool_call>\n{json}\n</tool_call>`` blocks the model
# itself writes, unless the content already holds them (the collector keeps the model's raw
# text as content); ``tool`` turns render like any other role. Without tools or tool_calls
# the rendering, and so every SFT assistant mask, is what it always was. ``list_tools=False``
# (a template variable: ``apply_chat_template(..., list_tools=False)``, or GRPOConfig's
# ``chat_template_kwargs``) leaves the listing out and renders the messages as if no tools were
# given: what the collector renders for an agent with its own system prompt, which the seed
# model was trained on (flywheel.loop.agents.grpo_env).
TOOLS_INTRO = "You may call these tools:\n<tools>\n"
TOOLS_OUTRO = (
    "</tools>\nTo call one, write\n"
    '<tool_call>\n{"name": "tool_name", "arguments": {"argument": "value"}}\n</tool_call>'
    "\nEach result comes back in a tool turn."
)


def _literal(text: str) -> str:
    """``text`` as a Jinja string literal."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


CHAT_TEMPLATE = (
    "{%- set ns = namespace(first=0) -%}"
    "{%- if tools and (list_tools is not defined or list_tools) -%}"
    "{{ '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{ messages[0]['content'] + '\\n\\n' }}{%- set ns.first = 1 -%}"
    "{%- endif -%}"
    "{{ " + _literal(TOOLS_INTRO) + " }}"
    "{%- for t in tools -%}{{ t | tojson(separators=(',', ':')) + '\\n' }}{%- endfor -%}"
    "{{ " + _literal(TOOLS_OUTRO + "<|im_end|>\n") + " }}"
    "{%- endif -%}"
    "{%- for message in messages[ns.first:] -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- set content = message['content'] or '' -%}"
    "{%- generation -%}{{ content }}"
    "{%- if message.tool_calls and '<tool_call>' not in content -%}"
    "{%- for call in message.tool_calls -%}"
    "{%- set f = call['function'] if call['function'] is defined else call -%}"
    "{%- if content or not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<tool_call>\\n{\"name\": ' + f['name'] | tojson + ', \"arguments\": ' }}"
    "{{ f['arguments'] if f['arguments'] is string else f['arguments'] | tojson }}"
    "{{ '}\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>' }}{%- endgeneration -%}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# How transformers' ``parse_response`` (TRL's tool-call parser, see
# trl.chat_template_utils.parse_response) reads an assistant turn of this template: text, then
# any ``<tool_call>`` JSON blocks, up to ``<|im_end|>``. The same format as TRL's Qwen3
# ``qwen3_template`` without its <think> field, which our template never writes.
RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open": "<tool_call>",
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int,
    out_dir: Path,
    added_tokens: Sequence[str] = (),
) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on ``texts`` and save it to ``out_dir``; same input, same output.
    ``added_tokens`` (``tokenizer.added_tokens``) become one token each, after the tool tags."""
    bpe = Tokenizer(models.BPE())
    # No normalizer: text is encoded exactly as written, so decode(encode(x)) == x. Digits
    # are split one per token (as Llama and DeepSeek do): merged digit strings ("00", "123")
    # would give a number a different token shape for each length, which defeats arithmetic.
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=_TRAINED_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    bpe.add_tokens(_added([*TOOL_TAGS, *added_tokens]))
    tok = _wrap(bpe)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    return tok


def _added(tokens: Iterable[str]) -> list[AddedToken]:
    # Matched in the raw text before pre-tokenization, longest first (so a listed string that
    # starts with <tool_call> wins over the tag), and not special, so decoding keeps them.
    return [AddedToken(t, special=False, normalized=False) for t in dict.fromkeys(tokens)]


def _wrap(bpe: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        # The default cleanup rewrites " ." to "." and breaks the round trip.
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,  # packing, not the tokenizer, decides sequence length
    )


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an answer: ``<|im_end|>`` (if the vocabulary has it) and EOS."""
    ids = [tokenizer.get_vocab().get(IM_END), tokenizer.eos_token_id]
    return [i for i in dict.fromkeys(ids) if i is not None]


def load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """A local tokenizer directory (never downloaded), with a pad token guaranteed."""
    path = Path(path)
    if not path.is_dir() or not any(path.glob("tokenizer*.json")):
        raise FileNotFoundError(
            f"no tokenizer at {path} (expected a Hugging Face tokenizer directory with "
            "tokenizer.json); set tokenizer.path to one, or leave it unset to train one"
        )
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not tok.is_fast:
        raise ValueError(f"tokenizer at {path} is not a fast (tokenizers-backed) tokenizer")
    if tok.eos_token is None:
        raise ValueError(f"tokenizer at {path} has no eos_token; packing needs a separator")
    if tok.pad_token is None:
        # Reusing EOS as pad keeps the vocabulary (and so any pre-trained embedding) unchanged;
        # collators must then mask padding by attention_mask, not by token id.
        tok.pad_token = tok.eos_token
    return tok


def build_tokenizer(spec: Spec, inputs: Mapping[str, ShardSet]) -> artifacts.Artifact:
    """Publish the spec's tokenizer (trained on ``inputs``' deduplicated shards, or copied);
    reuse the current one if unchanged."""
    P.check_inputs(PRODUCT, spec, inputs)
    settings = spec.tokenizer
    root = spec.product_dir(PRODUCT)
    shards = inputs[INPUT]
    key = _key(spec, shards)
    current = _current(root)
    if current is not None and all(current.meta.get(k) == v for k, v in key.items()):
        return current
    staging = artifacts.staging_dir(root)
    built_from = {}  # a copied tokenizer was built from no product
    if settings.path is not None:
        tok = load_tokenizer(settings.path)
        tok.add_tokens(_added(settings.added_tokens))  # those it has already are skipped
        tok.save_pretrained(staging)
        docs = 0
    else:
        built_from = {INPUT: shards.version}
        counted = _Counted(islice(_texts(shards), settings.max_docs))
        tok = train_tokenizer(
            counted, settings.vocab_size, settings.min_frequency, staging, settings.added_tokens
        )
        docs = counted.n
    meta = {
        **key,
        "vocab_size": len(tok),
        "eos_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id,
        "docs": docs,
        "spec_fingerprint": spec.fingerprint(),
    }
    return artifacts.publish(root, staging, inputs=built_from, **meta)


def _key(spec: Spec, shards: ShardSet) -> dict[str, Any]:
    """What decides the tokenizer: equal keys mean re-materializing would change nothing."""
    settings = spec.tokenizer.model_dump(mode="json")
    if spec.tokenizer.path is not None:
        path = Path(spec.tokenizer.path)
        return {"source": str(path), "source_sha": _dir_sha(path), "settings": settings}
    return {"source": "trained", "input_version": shards.version, "settings": settings}


def _dir_sha(path: Path) -> str | None:
    """Content hash of a tokenizer directory, so an edited local tokenizer is re-published."""
    if not path.is_dir():
        return None  # load_tokenizer raises the error that names the path
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _current(root: Path) -> artifacts.Artifact | None:
    if not artifacts.has_current(root):
        return None
    try:
        return artifacts.read_current(root)
    except artifacts.ArtifactError:
        return None  # nothing good to reuse: build a fresh version


def _texts(shards: Any) -> Iterator[str]:
    for batch in shards.iter_batches(["text"]):
        yield from batch["text"].to_list()


class _Counted:
    """An iterator that counts what it yielded (the trainer consumes it; we report docs)."""

    def __init__(self, it: Iterator[str]):
        self._it = it
        self.n = 0

    def __iter__(self) -> Iterator[str]:
        for x in self._it:
            self.n += 1
            yield x
