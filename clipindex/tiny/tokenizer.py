"""A compact word-level vocabulary that goes through open_clip's HF-tokenizer route.

The default CLIP BPE vocabulary (49,408 tokens) would be most of a tiny model's weights.
The tiny backbones instead use a word-level ``tokenizers`` tokenizer built from the demo
world's captions, its category names and the prompt templates, saved next to the weights
(``tokenizer.json`` + ``tokenizer_config.json``) so that
``open_clip.get_tokenizer("local-dir:DIR")`` loads it through ``transformers``.

Ids: ``[PAD]`` 0, ``[UNK]`` 1, ``[SOT]`` 2, the words in sorted order, then ``[EOT]`` as
the highest id, so open_clip's default ``argmax`` text pooling finds the end of the text.
Unknown words map to ``[UNK]``; text is lower-cased before lookup.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PAD, UNK, SOT, EOT = "[PAD]", "[UNK]", "[SOT]", "[EOT]"

__all__ = ["PAD", "UNK", "SOT", "EOT", "words_of", "build_tokenizer", "save_tokenizer"]


def _pre_tokenizer():  # noqa: ANN202 - tokenizers objects have no stable public type
    from tokenizers import normalizers, pre_tokenizers

    return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]), (
        pre_tokenizers.Whitespace()
    )


def words_of(texts: Iterable[str]) -> set[str]:
    """Return the set of words the tokenizer would split ``texts`` into.

    Examples
    --------
    >>> sorted(words_of(["A photo of a cat.", "two Dogs"]))
    ['.', 'a', 'cat', 'dogs', 'of', 'photo', 'two']
    """
    norm, pre = _pre_tokenizer()
    words: set[str] = set()
    for text in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    return words


def build_tokenizer(words: Iterable[str], *, context_length: int):
    """Build a word-level ``tokenizers.Tokenizer`` over ``words``.

    Parameters
    ----------
    words
        The vocabulary (duplicates and special-token names are ignored).
    context_length
        Every encoding is padded / truncated to this many ids, ``[EOT]`` kept.

    Examples
    --------
    >>> tok = build_tokenizer({"a", "cat"}, context_length=6)
    >>> tok.encode("a zebra cat").ids
    [2, 3, 1, 4, 5, 0]
    """
    from tokenizers import Tokenizer, models, processors

    vocab_words = sorted(set(words) - {PAD, UNK, SOT, EOT})
    vocab = {PAD: 0, UNK: 1, SOT: 2}
    vocab.update({w: i + 3 for i, w in enumerate(vocab_words)})
    vocab[EOT] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer, tok.pre_tokenizer = _pre_tokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, vocab[SOT]), (EOT, vocab[EOT])]
    )
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(pad_id=0, pad_token=PAD, length=context_length)
    return tok


def save_tokenizer(tok, out_dir: str | Path) -> list[Path]:
    """Save ``tok`` into ``out_dir`` in the layout ``transformers.AutoTokenizer`` reads.

    ``tokenizer.json`` is the ``tokenizers`` file itself; ``tokenizer_config.json`` names
    the generic ``PreTrainedTokenizerFast`` class (known to transformers 4 and 5) and the
    special tokens. Returns the files written.
    """
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": tok.truncation["max_length"],
        "unk_token": UNK,
        "pad_token": PAD,
        "bos_token": SOT,
        "eos_token": EOT,
        "padding_side": "right",
        "truncation_side": "right",
    }
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return [out / "tokenizer.json", out / "tokenizer_config.json"]
