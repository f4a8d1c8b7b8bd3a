"""open_clip's CLIP BPE tokenizer (SimpleTokenizer) rebuilt as a `tokenizers` Tokenizer, so an exported text
tower's ids can be made by any runtime that loads a tokenizer.json.

SimpleTokenizer cleans a text (ftfy.fix_text, HTML unescaping, whitespace runs to one space, strip,
lower case), splits it with CLIP's pattern, maps each piece's UTF-8 bytes to GPT-2's byte alphabet and
applies its BPE merges with `</w>` ending each word; `<start_of_text>` and `<end_of_text>` enclose the
ids, truncated to the context length (the last kept id becomes end-of-text) and zero-padded. The rebuilt
tokenizer does the same with NFC normalisation in place of ftfy and HTML unescaping, which change only
mis-encoded text (mojibake, `&amp;`); tests/test_towers.py checks the ids are equal on other text.
"""
from __future__ import annotations

from typing import Any

from ..errors import ZeroshiftError


def from_simple_tokenizer(tok: Any) -> Any:
    """A tokenizers.Tokenizer giving `tok`'s ids (before padding), for an open_clip SimpleTokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    if getattr(tok, "reduction_fn", None) is not None:
        raise ZeroshiftError("open_clip's tokenizer here reduces long texts its own way (reduction_mask), which "
                             "no tokenizer.json describes")
    clean = getattr(getattr(tok, "clean_fn", None), "__name__", "_clean_lower")
    if clean not in ("_clean_lower", "_clean_whitespace"):
        raise ZeroshiftError(f"open_clip's tokenizer cleans texts with {clean}, which no tokenizer.json describes")
    sot, eot = tok.decoder[tok.sot_token_id], tok.decoder[tok.eot_token_id]
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)  # [(a, b), ...] in merge order
    bpe = models.BPE(vocab=dict(tok.encoder), merges=merges, end_of_word_suffix="</w>", continuing_subword_prefix="")
    tokenizer = Tokenizer(bpe)
    steps = [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    tokenizer.normalizer = normalizers.Sequence(steps + ([normalizers.Lowercase()] if clean == "_clean_lower" else []))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tok.pat.pattern), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", special_tokens=[(sot, tok.sot_token_id), (eot, tok.eot_token_id)])
    # written inside a text they are those tokens (CLIP's pattern matches them first, after lower-casing)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=True) for t in (sot, eot)])
    return tokenizer
