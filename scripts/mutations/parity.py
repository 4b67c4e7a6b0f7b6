"""Parity: bugs the transformers parity tests must see now that their random references are drawn with
spread_init (tests/parity/_init.py: N(0, 1/fan_in), attention far from uniform, logits std ~1).

Each entry names the parity test that catches it; the comment gives the largest |logit| difference the
mutation makes over that test's cases with transformers' N(0, 0.02) init ("old") and with spread_init
("new"), against the tests' tolerance atol = rtol = 1e-5. Mutations that only move attention *scores*
(a head layout, the 1/sqrt(d) scale, which image tokens are keys) were nearly invisible before: with
scores ~0.03 every query averaged its keys uniformly whatever the scores were.
"""
from mutations import Mutation   # scripts/ is on sys.path (scripts/mutation_check.py)

P = "tests/parity/"

MUTATIONS = [
    # old 0.70, new 3.8 (config "a", first-EOS rule; config "b" pools at argmax and is untouched)
    Mutation(name="parity: clip text feature read one position before the EOS",
             file="ocellus/models/text/clip_text.py",
             old="return hit.int().argmax(dim=-1)",
             new="return hit.int().argmax(dim=-1) - 1",
             tests=[f"{P}test_clip_parity.py::test_logits_equal_transformers"]),
    # old 5.1e-4 .. 2.3e-3, new 1.6 .. 3.1 (hidden states / pooled / MLM / NSP over 6 cases)
    Mutation(name="parity: bert key heads split by view(B, H, S, Dh) without the transpose",
             file="ocellus/models/text/bert.py",
             old="k = self.key(src).view(B, src.shape[1], H, Dh).transpose(1, 2)",
             new="k = self.key(src).view(B, H, src.shape[1], Dh)",
             tests=[f"{P}test_bert_parity.py::test_outputs_equal_transformers"]),
    # BERT: old 6.7e-4 .. 3.9e-3, new 1.2 .. 3.0; BLIP-2 (Q-Former): old 1.2e-4 .. 3.4e-4, new 3.0 .. 3.6
    Mutation(name="parity: bert / q-former attention scores not divided by sqrt(head_dim)",
             file="ocellus/models/text/bert.py",
             old="y = attend(q, k, v, mask, is_causal=False).transpose(1, 2)",
             new="y = attend(q, k, v, mask, is_causal=False, scale=1.0).transpose(1, 2)",
             tests=[f"{P}test_bert_parity.py::test_outputs_equal_transformers",
                    f"{P}test_blip2_parity.py::test_logits_equal_transformers"]),
    # old 2.2e-4 .. 5.9e-4, new 0.32 .. 0.40
    Mutation(name="parity: blip2 q-former queries cross-attend to the image tokens without CLS",
             file="ocellus/models/text/bert.py",
             old="queries = self.crossattention(queries, encoder_mask, kv=encoder_states)",
             new="queries = self.crossattention(queries, encoder_mask, kv=encoder_states[:, 1:])",
             tests=[f"{P}test_blip2_parity.py::test_logits_equal_transformers"]),
    # old 0.064 .. 0.10, new 4.1 .. 4.5 (the two "default" cases; "full" keeps every row)
    Mutation(name="parity: llava 'default' feature strategy drops the last patch instead of CLS",
             file="ocellus/models/vlm.py",
             old="feats = feats[:, 1:]",
             new="feats = feats[:, :-1]",
             tests=[f"{P}test_llava_parity.py::test_logits_equal_transformers"]),
    # old 0.55 .. 0.67, new 3.6 .. 4.1
    Mutation(name="parity: llava-next image_newline put before each grid row instead of after",
             file="ocellus/models/connectors/anyres.py",
             old="grid = torch.cat([grid, newline], dim=1)",
             new="grid = torch.cat([newline, grid], dim=1)",
             tests=[f"{P}test_llava_next_parity.py::test_logits_equal_transformers"]),
    # old 0.089 .. 0.10, new 3.4 .. 4.5
    Mutation(name="parity: internvl pixel shuffle window row / column offsets transposed",
             file="ocellus/models/connectors/pixel_shuffle.py",
             old="x = x.permute(0, 1, 3, 2, 4, 5)",
             new="x = x.permute(0, 1, 3, 4, 2, 5)",
             tests=[f"{P}test_internvl_parity.py::test_logits_equal_transformers"]),
]
