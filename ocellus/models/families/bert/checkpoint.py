"""BERT checkpoints (the registry's "bert"): BertModel, BertForMaskedLM and BertForPreTraining, built by `build_bert`
(models/text/bert.py's Bert with the class's heads), loaded by `ocellus.load` and written back by `ocellus.save`.

Our names differ from transformers' in four places the table maps:
    layers.{i}.attention.{query,key,value}  <-> encoder.layer.{i}.attention.self.{query,key,value}
    layers.{i}.ffn.intermediate             <-> encoder.layer.{i}.intermediate.dense
    layers.{i}.ffn.output                   <-> encoder.layer.{i}.output
    mlm / nsp / pooler                      <-> cls.predictions.transform (+ bias), cls.seq_relationship, pooler.dense
The heads' models prefix the encoder with `bert.`; BertModel does not. `bert_layer_rules` is reused by
the Q-Former's table (families/blip2/: BLIP-2 names the self-attention `attention.attention`, not `attention.self`).
"""
from __future__ import annotations

from ocellus.errors import ConfigError
from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.models.text.bert import HF_ARCHITECTURES, Bert, BertConfig

MODEL_TYPES = ("bert",)

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


def build_bert(cfg: dict) -> Bert:
    arch = next((a for a in cfg.get("architectures") or [] if a in HF_ARCHITECTURES), "BertModel")
    pooler, mlm, nsp = HF_ARCHITECTURES[arch]
    return Bert(BertConfig.from_hf(cfg), pooler=pooler, mlm_head=mlm, nsp_head=nsp)


def bert_hf_config(model: Bert) -> dict:
    if model.architecture is None:
        raise ConfigError("this BERT's heads (pooler, mlm, nsp) match no transformers class; nothing to save as")
    return {**model.config.to_hf(), "architectures": [model.architecture]}


def family(arch: str) -> Family:
    """The Family of one of the three BERT checkpoint kinds (`arch` in PREFIXES)."""
    return Family(name=f"bert:{arch}", model_class=Bert, build=build_bert, keymap=bert_keys(PREFIXES[arch]),
                  hf_config=bert_hf_config,
                  tied=lambda m: ("mlm.decoder.weight", "mlm.decoder.bias")
                  if m.mlm is not None and m.config.tie_word_embeddings else ())
