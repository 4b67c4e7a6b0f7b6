"""BERT edges against transformers: a config.json that leaves type_vocab_size out (older exports, hand-written
configs) gets transformers' 2 segment embeddings, so such a checkpoint loads strictly and its hidden states
equal transformers' for sentence-B tokens too; a sequence of exactly max_position_embeddings tokens runs
(every position used) and equals transformers'."""
import json

import torch

import ocellus
from _init import spread_init


def _saved_reference(path, max_position_embeddings: int):
    """A random transformers BertModel (attention far from uniform), saved to path."""
    import transformers as tf
    torch.manual_seed(0)
    ref = spread_init(tf.BertModel(tf.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1,
                                                 num_attention_heads=4, intermediate_size=48,
                                                 max_position_embeddings=max_position_embeddings)).eval())
    ref.save_pretrained(path)
    return ref


def test_config_without_type_vocab_size_has_two_segments(tmp_path):
    import transformers as tf
    ref = _saved_reference(tmp_path, 16)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved.pop("type_vocab_size")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    ours = ocellus.load(tmp_path)
    assert ours.config.type_vocab_size == tf.BertConfig().type_vocab_size == 2
    ids = torch.randint(1, 60, (2, 9), generator=torch.Generator().manual_seed(1))
    types = torch.tensor([[0] * 4 + [1] * 5, [0] * 9])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, token_type_ids=types).last_hidden_state,
                                   ref(input_ids=ids, token_type_ids=types).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_a_sequence_of_exactly_max_position_embeddings_tokens(tmp_path):
    ref = _saved_reference(tmp_path, 12)
    ours = ocellus.load(tmp_path)
    ids = torch.randint(1, 60, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).last_hidden_state, ref(input_ids=ids).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)
