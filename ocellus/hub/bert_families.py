"""Checkpoint names of BERT encoders (ocellus/models/text/bert.py, whose `family` builds them): BertModel,
BertForMaskedLM and BertForPreTraining checkpoints, loaded by `ocellus.load` and written back by `ocellus.save`.

Our names differ from transformers' in four places the table maps:
    layers.{i}.attention.{query,key,value}  <-> encoder.layer.{i}.attention.self.{query,key,value}
    layers.{i}.ffn.intermediate             <-> encoder.layer.{i}.intermediate.dense
    layers.{i}.ffn.output                   <-> encoder.layer.{i}.output
    mlm / nsp / pooler                      <-> cls.predictions.transform (+ bias), cls.seq_relationship, pooler.dense
The heads' models prefix the encoder with `bert.`; BertModel does not. `bert_layer_rules` is reused by
the Q-Former's table (BLIP-2 names the self-attention `attention.attention`, not `attention.self`).
"""
from __future__ import annotations

from ocellus.hub.keymap import KeyMap

# the heads' models prefix the encoder's names; BertModel does not
PREFIXES = {"BertModel": "", "BertForMaskedLM": "bert.", "BertForPreTraining": "bert."}


def bert_layer_rules(ours: str, theirs: str, self_name: str = "self") -> tuple[tuple[str, str], ...]:
    """(ours, theirs) rules for BertLayer stacks: ours `{ours}{i}.` <-> theirs `{theirs}{i}.`."""
    rules = []
    for attn in ("attention", "crossattention"):
        rules += [(f"{ours}{{i}}.{attn}.output.{{rest}}", f"{theirs}{{i}}.{attn}.output.{{rest}}"),
                  (f"{ours}{{i}}.{attn}.{{rest}}", f"{theirs}{{i}}.{attn}.{self_name}.{{rest}}")]
    for ffn, suffix in (("ffn", ""), ("ffn_query", "_query")):
        rules += [(f"{ours}{{i}}.{ffn}.intermediate.{{rest}}", f"{theirs}{{i}}.intermediate{suffix}.dense.{{rest}}"),
                  (f"{ours}{{i}}.{ffn}.output.{{rest}}", f"{theirs}{{i}}.output{suffix}.{{rest}}")]
    return tuple(rules)


def bert_keys(prefix: str) -> KeyMap:
    return KeyMap(
        rules=(
            ("embeddings.{rest}", f"{prefix}embeddings.{{rest}}"),
            *bert_layer_rules("layers.", f"{prefix}encoder.layer."),
            ("pooler.{rest}", f"{prefix}pooler.dense.{{rest}}"),
            ("mlm.dense.{rest}", "cls.predictions.transform.dense.{rest}"),
            ("mlm.LayerNorm.{rest}", "cls.predictions.transform.LayerNorm.{rest}"),
            ("mlm.decoder.{rest}", "cls.predictions.decoder.{rest}"),
            ("mlm.bias", "cls.predictions.bias"),
            ("nsp.{rest}", "cls.seq_relationship.{rest}"),
        ),
        # non-persistent arange / zeros buffers older exports carry
        drop=(r"(^|\.)embeddings\.position_ids$", r"(^|\.)embeddings\.token_type_ids$"),
    )
