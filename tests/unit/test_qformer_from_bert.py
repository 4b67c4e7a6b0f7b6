"""Q-Former.from_bert (BLIP-2 initialises the Q-Former from bert-base) on a tiny random BERT: every layer's
self-attention, the text FFN AND the query FFN start as BERT's FFN, the embedding LayerNorm and the word /
position tables are copied; cross-attention and the queries keep their fresh init.
"""
import torch

from ocellus.models.connectors.qformer import QFormer, QFormerConfig
from ocellus.models.text.bert import Bert, BertConfig

DIMS = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=40, max_position_embeddings=16)


def test_from_bert_copies_attention_both_ffns_norm_and_embeddings():
    torch.manual_seed(0)
    bert = Bert(BertConfig(num_hidden_layers=3, **DIMS))
    q = QFormer(QFormerConfig(num_query_tokens=4, num_hidden_layers=2, encoder_hidden_size=24,
                              cross_attention_frequency=2, text_input=True, **DIMS))
    cross = {k: v.clone() for k, v in q.layers[0].crossattention.state_dict().items()}
    queries = q.query_tokens.detach().clone()
    q.from_bert(bert)
    for ours, theirs in zip(q.layers, bert.layers):
        for k, v in theirs.attention.state_dict().items():
            assert torch.equal(ours.attention.state_dict()[k], v), k
        for k, v in theirs.ffn.state_dict().items():
            assert torch.equal(ours.ffn.state_dict()[k], v), f"text ffn {k}"
            assert torch.equal(ours.ffn_query.state_dict()[k], v), f"query ffn {k}"
    assert torch.equal(q.layernorm.weight, bert.embeddings.LayerNorm.weight)
    assert torch.equal(q.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    assert torch.equal(q.embeddings.position_embeddings.weight, bert.embeddings.position_embeddings.weight)
    assert all(torch.equal(q.layers[0].crossattention.state_dict()[k], v) for k, v in cross.items())
    assert torch.equal(q.query_tokens, queries)
    out = q(torch.randn(2, 5, 24), input_ids=torch.tensor([[1, 2, 3], [4, 5, 6]]))
    assert out.shape == (2, 4 + 3, 32) and torch.isfinite(out).all()


def test_from_hf_takes_the_vision_width_it_is_given():
    """BLIP-2 sets the Q-Former's encoder_hidden_size to the vision tower's width: a qformer_config that leaves
    it out (or holds transformers' 1408 default) still cross-attends to the tower it is built with."""
    cfg = QFormerConfig.from_hf({"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
                                 "num_hidden_layers": 2}, num_query_tokens=4, encoder_hidden_size=24)
    assert cfg.encoder_hidden_size == 24
    stale = QFormerConfig.from_hf({"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
                                   "num_hidden_layers": 2, "encoder_hidden_size": 1408}, 4, encoder_hidden_size=24)
    assert stale.encoder_hidden_size == 24
    assert QFormerConfig.from_hf({"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
                                 4).encoder_hidden_size == 1408                      # transformers' default
    out = QFormer(cfg)(torch.randn(2, 5, 24))
    assert out.shape == (2, 4, 32)
