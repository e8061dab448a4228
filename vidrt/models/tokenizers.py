"""Offline word-level tokenizers built in memory.

No tokenizer can be downloaded here, so tiny models and the shipped sample model use a
`PreTrainedTokenizerFast` over a small word vocabulary. It saves and loads through the normal
`save_pretrained` / `from_pretrained` path, so pipelines round-trip like real ones.
"""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

# Words every tiny model knows: the sample grammar plus a few common prompt words.
CAPTION_WORDS: tuple[str, ...] = (
    "a", "an", "the", "on", "in", "of", "and", "with", "moves", "bounces", "background",
    "circle", "square", "triangle", "ball", "box",
    "red", "green", "blue", "yellow", "white", "black", "cyan", "magenta", "orange", "purple", "gray",
    "left", "right", "up", "down", "up-left", "up-right", "down-left", "down-right", "around",
)


def word_tokenizer(
    words: Iterable[str] = CAPTION_WORDS,
    *,
    style: str = "t5",
    model_max_length: int = 77,
) -> PreTrainedTokenizerFast:
    """A lowercase whitespace word tokenizer.

    style="t5": `<pad>`=0, `</s>`=1, `<unk>`=2, sequences end with `</s>` (UMT5 convention).
    style="clip": `<|startoftext|>`=0, `<|endoftext|>`=1 (also pad), `<unk>`=2, sequences are wrapped
    in start/end tokens (CLIP convention: the pooled output reads the end token).
    """
    if style == "t5":
        specials = ["<pad>", "</s>", "<unk>"]
    elif style == "clip":
        specials = ["<|startoftext|>", "<|endoftext|>", "<unk>"]
    else:
        raise ValueError(f"unknown tokenizer style {style!r}")
    vocab = {tok: i for i, tok in enumerate(specials)}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if style == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
            model_max_length=model_max_length,
        )
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", unk_token="<unk>", model_max_length=model_max_length,
    )
