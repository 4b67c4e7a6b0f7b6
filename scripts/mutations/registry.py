"""The family registry (ocellus/hub/families.py) and the one strict load/save path every kind takes
(hub/checkpoint.py, generators, unified models), guarded by tests/unit/test_family_registry.py,
tests/unit/test_adding_a_model.py (docs/ADDING_A_MODEL.md followed literally) and test_checkpoint_untrusted.py."""
from mutations import Mutation

REGISTRY = "tests/unit/test_family_registry.py"
PAGE = "tests/unit/test_adding_a_model.py"
UNTRUSTED = "tests/unit/test_checkpoint_untrusted.py::test_unknown_model_type_is_a_config_error_listing_the_known_ones"
FAMILIES = "ocellus/hub/families.py"

MUTATIONS = [
    Mutation(name="registry: a family registered twice replaces the first", file=FAMILIES,
             old="    if record.name in FAMILIES:\n", new="    if record.name in ():\n",
             tests=[PAGE + "::test_the_page_registry_line_refuses_a_second_registration"]),
    Mutation(name="registry: a model_type another family claims is taken over", file=FAMILIES,
             old='claims += [("model_type", t, _BY_MODEL_TYPE) for t in record.model_types]',
             new='claims += [("model_type", t, {}) for t in record.model_types]',
             tests=[REGISTRY + "::test_register_refuses_what_another_family_claims_and_unregister_undoes_it"]),
    Mutation(name="registry: unregister leaves the model_type known", file=FAMILIES,
             old="        MODEL_TYPES.discard(t)\n", new="        pass\n",
             tests=[REGISTRY + "::test_register_refuses_what_another_family_claims_and_unregister_undoes_it"]),
    Mutation(name="registry: a training_processor looked up in the modeling module", file=FAMILIES,
             old='"training_processor": "processor"', new='"training_processor": "modeling"',
             tests=[PAGE + "::test_the_page_family_composes_saves_reopens_and_serves_its_processor"]),
    Mutation(name="registry: a config whose model_type and architectures disagree is built by its architecture",
             file=FAMILIES, old="            if record is not None and a not in record.architectures:",
             new="            if record is None and a not in ():", tests=[UNTRUSTED]),
    Mutation(name="registry: an own-format config (no architectures) is not found by its model_type", file=FAMILIES,
             old="    if not archs and record is not None and not record.architectures and record.checkpoint is not None:",
             new="    if not archs and record is not None and record.architectures and record.checkpoint is not None:",
             tests=[REGISTRY + "::test_generators_load_and_save_through_ocellus_in_their_own_format"]),
    Mutation(name="registry: save scans every family before the model's own (imports them all)", file=FAMILIES,
             old="        records.insert(0, FAMILIES[first])", new="        records.append(FAMILIES[first])",
             tests=[REGISTRY + "::test_saving_a_named_model_imports_only_its_family"]),
    Mutation(name="registry: save writes dtype into an Ocellus spec format", file="ocellus/hub/checkpoint.py",
             old="    if fam.config_dtype:\n", new="    if True:\n",
             tests=[REGISTRY + "::test_generators_load_and_save_through_ocellus_in_their_own_format"]),
    Mutation(name="registry: a unified model reloads without its drawing options",
             file="ocellus/models/unified/checkpoint.py",
             old='model.generate_options = cfg["image_size"], cfg["colours"], cfg.get("generate", {})',
             new='model.generate_options = cfg["image_size"], cfg["colours"], {}',
             tests=[REGISTRY + "::test_unified_models_load_and_save_through_ocellus"]),
]
