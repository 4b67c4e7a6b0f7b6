"""The HF stack both ways (issue 22): what an Ocellus VLM export must carry for transformers'
AutoProcessor + AutoModelForImageTextToText to prompt and run it as Ocellus does."""
from mutations import Mutation   # scripts/ is on sys.path (scripts/mutation_check.py)

T = "tests/parity/test_hf_vlm_stack.py"

MUTATIONS = [
    Mutation(name="hf stack: llava config without the top-level tie flag (transformers re-initialises lm_head)",
             file="ocellus/models/families/llava/checkpoint.py",
             old='out["tie_word_embeddings"] = bool(out["text_config"].get("tie_word_embeddings", False))',
             new='pass',
             tests=[f"{T}::test_recipe_export_runs_in_transformers_as_in_ocellus"]),
    Mutation(name="hf stack: processor_config.json counts no CLS token",
             file="ocellus/hub/processor_files.py",
             old='"num_additional_image_tokens": processor.num_extra_tokens}',
             new='"num_additional_image_tokens": 0}',
             tests=[f"{T}::test_recipe_export_runs_in_transformers_as_in_ocellus"]),
    Mutation(name="hf stack: export writes no chat template",
             file="ocellus/hub/processor_files.py",
             old="    if template:\n",
             new="    if template and False:\n",
             tests=[f"{T}::test_recipe_export_runs_in_transformers_as_in_ocellus"]),
    Mutation(name="hf stack: recipe export drops the processor",
             file="ocellus/train/vlm_export.py",
             old="save_model(model, path, tokenizer=tok, processor=training_processor(model, tok, size))",
             new="save_model(model, path, tokenizer=tok)",
             tests=[f"{T}::test_recipe_export_runs_in_transformers_as_in_ocellus"]),
]

Q = "tests/parity/test_qwen2_vl_parity.py"
MUTATIONS += [
    Mutation(name="qwen2 vit: equal runs split with the run and position axes swapped",
             file="ocellus/models/vision/qwen2_vit.py",
             old="runs = [t.view(H, self.n, self.longest, Dh).transpose(0, 1) for t in (q, k, v)]",
             new="runs = [t.view(H, self.longest, self.n, Dh).permute(2, 0, 1, 3) for t in (q, k, v)]",
             tests=[Q]),
    Mutation(name="qwen2 vit: unequal runs attend to their padding",
             file="ocellus/models/vision/qwen2_vit.py",
             old="y = attend(*runs, self.valid[:, None, None, :], is_causal=False)",
             new="y = attend(*runs, None, is_causal=False)",
             tests=[Q]),
    Mutation(name="qwen2 vit: frames treated as one run (images attend to each other)",
             file="ocellus/models/vision/qwen2_vit.py",
             old="        frames = Segments(frame_segments(grids).to(x.device))",
             new="        frames = Segments(torch.zeros_like(frame_segments(grids)).to(x.device))",
             tests=[Q]),
]

C = "tests/unit/test_model_card.py"
MUTATIONS += [
    Mutation(name="model card: a re-run evaluation is appended instead of replacing the old one",
             file="ocellus/hub/model_card.py",
             old="sections = [s for s in sections if not s.startswith(key)] + [\"\\n\".join(rows)]",
             new="sections = sections + [\"\\n\".join(rows)]",
             tests=[C]),
    Mutation(name="model card: weak types are those above the threshold",
             file="ocellus/hub/model_card.py",
             old='metric == "accuracy" and v < WEAK_BELOW]',
             new='metric == "accuracy" and v > WEAK_BELOW]',
             tests=[C]),
    Mutation(name="model card: export writes no card",
             file="ocellus/train/run.py",
             old="    write_model_card(path, recipe, tok)\n",
             new="",
             tests=[C]),
]

MUTATIONS += [
    Mutation(name="processor: a string-content template's placeholder left inside the literal text spans",
             file="ocellus/data/processor.py",
             old='        if self._content_format != "parts" and spans:\n',
             new='        if False:\n',
             tests=["tests/unit/test_processor_string_template.py"]),
]

MUTATIONS += [
    Mutation(name="decoder config: wrong-typed ints pass the check",
             file="ocellus/errors.py",
             old="if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:",
             new="if isinstance(value, kinds) and value <= 0:",
             tests=["tests/unit/test_decoder_config_types.py"]),
]

MUTATIONS += [
    Mutation(name="tokenizer: a side file holding a JSON list is taken as a config",
             file="ocellus/data/tokenizer.py",
             old="    return read_json_object(path)   # a CheckpointError naming the file when it is not a JSON object",
             new="    return json.loads(path.read_text()) if path.is_file() else None",
             tests=["tests/unit/test_tokenizer_config_json.py"]),
]

MUTATIONS += [
    Mutation(name="albef/blip pairs: a LLaVA-JSON file is not opened before step 1",
             file="ocellus/train/albef_blip_run.py",
             old="        kept = screen(min(n, len(rows)), pair, lambda i: f\"record {rows[i]['id']!r}\", report, skip)",
             new="        kept = list(range(min(n, len(rows))))",
             tests=["tests/unit/test_pair_source_bad_images.py"]),
]
