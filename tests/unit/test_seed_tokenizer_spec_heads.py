"""tokenizer_spec (what a SEED codec's config.json stores of its tokenizer) keeps every number that changes the
computation, not only those that change the weights' shapes: a reverse transformer with 4 heads has the same
state-dict shapes as one with 2, so a spec that forgot recon_heads would reload silently into other outputs."""
import torch

from ocellus.models.unified.seed_detokenizer import build_tokenizer, tokenizer_spec

from test_seed_detokenizer import TOKENIZER


def test_reconstruction_heads_round_trip_and_the_rebuilt_tokenizer_computes_the_same():
    torch.manual_seed(0)
    tok = build_tokenizer({**TOKENIZER, "recon_heads": 4}).eval()
    assert tok.reverse[0].attn.num_heads == 4
    spec = tokenizer_spec(tok)
    assert spec["recon_heads"] == 4
    again = build_tokenizer(spec).eval()
    again.load_state_dict(tok.state_dict())
    assert again.reverse[0].attn.num_heads == 4
    codes = torch.randint(0, TOKENIZER["num_codes"], (2, tok.Q))
    with torch.no_grad():
        torch.testing.assert_close(again.decode_embedding(codes), tok.decode_embedding(codes))
