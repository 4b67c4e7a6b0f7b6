"""What the vision-language families share when they read configs and compose recipes: a composite
checkpoint's key rules in transformers 5's two layouts and its decoder's tied lm_head, the text_config check,
a recipe's spec check, its image token and the directories of its pretrained parts."""
from __future__ import annotations

from pathlib import Path

from ocellus.errors import ConfigError
from ocellus.models.families.decoder.checkpoint import decoder_rules

# a composite config.json's text_config model_types the shared decoder reads (vicuna: Llama's layout)
TEXT_MODEL_TYPES = ("llama", "qwen2", "mistral", "qwen3", "vicuna")


def two_layouts(parts: tuple[tuple[str, str], ...], body: str, lm_head: str) -> tuple[tuple[str, str], ...]:
    """(ours, theirs) rules of a VLM checkpoint in both layouts transformers 5 knows. First the hub's (what
    save_pretrained writes, and we write; first match wins when saving): `parts` as given, the decoder's body
    under `body` and its head named `lm_head`. Then the in-memory one, read only: every part under `model.`,
    the decoder's body under `model.language_model.` and its head `lm_head.weight`."""
    return (*parts, *decoder_rules("language_model.", body, lm_head),
            *((ours, f"model.{theirs}") for ours, theirs in parts),
            *decoder_rules("language_model.", "model.language_model.", "lm_head.weight"))


def tied_lm_head(model) -> tuple[str, ...]:
    """A model whose `language_model` ties lm_head to the embeddings writes it once (the Family's `tied`)."""
    return ("language_model.lm_head.weight",) if model.language_model.config.tie_word_embeddings else ()


def text_config(cfg: dict, family: str = "LLaVA", default: str = "llama") -> dict:
    """A composite config.json's text_config as the decoder reads it: `default` when its model_type is unnamed
    (the family's transformers default), any decoder the shared one reads (so every family takes Qwen3 as
    transformers' AutoModel would), the top-level tie flag carried down when text_config has none."""
    text = dict(cfg.get("text_config") or {})
    if not text:
        raise ConfigError(f"{family} config.json has no text_config")
    text.setdefault("model_type", default)
    if text["model_type"] not in TEXT_MODEL_TYPES:
        raise ConfigError(f"{family} text_config.model_type {text['model_type']!r} is not a supported decoder "
                          f"({', '.join(TEXT_MODEL_TYPES)})")
    # transformers 5 ties by the top-level flag, which its composite configs set when text_config's is (older
    # saves kept it there): either one set ties, even over an explicit text_config false (what 5 itself saves
    # for LlavaConfig(tie_word_embeddings=True) with no lm_head in the weights)
    if cfg.get("tie_word_embeddings"):
        text["tie_word_embeddings"] = True
    return text


def config_image_token(cfg: dict, family: str) -> int | None:
    """config.json's image placeholder id: image_token_index, or image_token_id, transformers' other name for the
    same field (its configs' attribute_map); the two must agree. None when neither is there."""
    index = cfg.get("image_token_index", cfg.get("image_token_id"))
    if cfg.get("image_token_id", index) != index:
        raise ConfigError(f"{family} config.json has image_token_index {index} and image_token_id "
                          f"{cfg['image_token_id']}")
    return index


def feature_layers(value, states: int) -> list[int]:
    """config.json's vision_feature_layer (one int or a list of them) -> the list, each an index into the tower's
    `states` hidden states (embeddings + one per block): anything else is a ConfigError at load, not a TypeError
    or an out-of-range layer at the first image."""
    layers = [value] if isinstance(value, int) else value
    if (not isinstance(layers, list) or not layers
            or any(isinstance(x, bool) or not isinstance(x, int) or not -states <= x < states for x in layers)):
        raise ConfigError(f"vision_feature_layer must be an int or a non-empty list of ints in {-states}..{states - 1} "
                          f"(the vision tower's {states} hidden states), got {value!r}")
    return layers


def feature_layer(cfg: dict, family: str, default_select: str) -> tuple[int, str]:
    """config.json's (vision_feature_layer, vision_feature_select_strategy) for a bridge that reads ONE layer of
    the vision tower (a resampler or sampler): one int, and 'default' (drop CLS) or 'full'."""
    layer = cfg.get("vision_feature_layer", -1)
    select = cfg.get("vision_feature_select_strategy", default_select)
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise ConfigError(f"{family} vision_feature_layer must be one int (the bridge reads one layer), got {layer!r}")
    if select not in ("default", "full"):
        raise ConfigError(f"vision_feature_select_strategy must be 'default' or 'full', got {select!r}")
    return layer, select


def check_spec(spec: dict, known, family: str) -> None:
    """A recipe's model section may hold only `known` keys: a misspelt one is an error, never ignored."""
    unknown = set(spec) - set(known)
    if unknown:
        raise ConfigError(f"{family} model: unknown keys {sorted(unknown)}; known: {sorted(known)}")


def part_dirs(spec: dict) -> tuple[Path, Path]:
    """A recipe's pretrained vision tower and decoder directories (model.vision_from, model.llm_from)."""
    if not (spec.get("vision_from") and spec.get("llm_from")):
        raise ConfigError("model for a vlm needs `from`, or both `vision_from` and `llm_from`")
    return Path(spec["vision_from"]), Path(spec["llm_from"])


def image_token_id(tok, spec: dict) -> int:
    """The id of the recipe's image placeholder (model.image_token, default <image>) in the tokenizer."""
    image_token = spec.get("image_token", "<image>")
    index = tok.convert_tokens_to_ids(image_token)
    if index is None:
        raise ConfigError(f"the tokenizer has no image token {image_token!r}")
    return index
