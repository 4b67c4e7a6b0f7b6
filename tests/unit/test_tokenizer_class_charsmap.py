"""T5Tokenizer keeps only the SentencePiece charsmap of tokenizer.json's normalizer (transformers 5 passes it to the
class as `_spm_precompiled_charsmap` and drops the rest). No charsmap can be built offline here, so the step that
picks it is checked on the JSON it reads: alone, inside a Sequence, or absent."""
from ocellus.data.tokenizer_classes import _precompiled

CHARSMAP = {"type": "Precompiled", "precompiled_charsmap": "c29tZSBieXRlcw=="}


def test_the_charsmap_alone_or_in_a_sequence_is_kept_and_nothing_else():
    assert _precompiled(CHARSMAP) == CHARSMAP
    sequence = {"type": "Sequence", "normalizers": [{"type": "NFKC"}, CHARSMAP, {"type": "Lowercase"}]}
    assert _precompiled(sequence) == CHARSMAP


def test_no_charsmap_no_normalizer():
    assert _precompiled(None) is None
    assert _precompiled({"type": "NFKC"}) is None
    assert _precompiled({"type": "Sequence", "normalizers": [{"type": "NFKC"}]}) is None
    assert _precompiled({"type": "Precompiled", "precompiled_charsmap": ""}) is None   # an empty one maps nothing
