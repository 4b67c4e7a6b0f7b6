"""A checkpoint's generation_config.json as the defaults of its generation settings, as transformers' `generate`
reads it: the file's values stand where the caller passes none (Llama-3-Instruct's eos list with <|eot_id|>,
Qwen2's repetition_penalty, a chat model's do_sample / temperature / top_p).

Every field the file sets is one of three kinds, so none is silently ignored:
- a setting GenerationConfig implements (the caller's keyword overrides it);
- inert: it changes no generated id (bookkeeping, output formats, bos for a prompt that is always given), or it
  holds the value that switches its transformers feature off (typical_p 1.0, num_beam_groups 1, ...);
- anything else (typical_p 0.9, bad_words_ids, ...): logged as a warning naming each field and value,
  since generation goes on without it (an explicit keyword Ocellus lacks is a ConfigError instead).
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)
_WARNED: set[str] = set()

INERT = frozenset({
    "transformers_version", "_from_model_config", "bos_token_id", "decoder_start_token_id", "use_cache",
    "cache_implementation", "cache_config", "return_dict_in_generate", "output_scores", "output_logits",
    "output_attentions", "output_hidden_states", "num_assistant_tokens", "num_assistant_tokens_schedule",
    "assistant_confidence_threshold", "prompt_lookup_num_tokens", "max_matching_ngram_size", "disable_compile",
    "compile_config", "is_assistant", "token_healing",
})
# transformers' values that switch a feature off: a file holding them asks for nothing Ocellus lacks
OFF = {
    "min_length": 0, "num_return_sequences": 1, "num_beam_groups": 1, "diversity_penalty": 0.0,
    "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0, "renormalize_logits": False, "remove_invalid_values": False,
    "penalty_alpha": None, "top_h": None, "bad_words_ids": None, "force_words_ids": None, "constraints": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "exponential_decay_length_penalty": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None, "guidance_scale": None,
    "low_memory": None, "max_time": None, "watermarking_config": None, "dola_layers": None,
}


def checkpoint_defaults(model, fields) -> dict:
    """The generation_config.json the model was loaded with (hub/checkpoint.load_model keeps it as
    `model.generation_defaults`) -> {field: value} for the `fields` GenerationConfig implements; a null value
    leaves the field to Ocellus' default. Other fields are inert or warned about (module docstring)."""
    data = getattr(model, "generation_defaults", None) or {}
    used = {k: v for k, v in data.items() if k in fields and v is not None}
    dropped = {k: v for k, v in data.items() if k not in fields and k not in INERT and not _off(k, v)}
    message = ", ".join(f"{k}={v!r}" for k, v in sorted(dropped.items()))
    if dropped and message not in _WARNED:   # once per distinct file content, not every call
        _WARNED.add(message)
        log.warning("generation_config.json sets %s, which Ocellus' generate does not implement: generating "
                    "without %s", message, "it" if len(dropped) == 1 else "them")
    return used


def _off(field: str, value) -> bool:
    return field in OFF and value == OFF[field]
