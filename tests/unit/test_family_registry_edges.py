"""Edges of the family registry (ocellus/hub/families.py): a family claims its own class only, not a subclass
(a subclass may carry tensors its key table has no name for); a record's module that exists but fails to import
a dependency raises that ImportError, not "the registry names a module that does not exist"; unregister drops the
Families it cached, so a re-registered family is built from its new module."""
import sys
import textwrap

import pytest

from ocellus.errors import ConfigError
from ocellus.hub import families
from ocellus.hub.families import FamilyRecord, import_piece, register, unregister
from ocellus.models.text.decoder import DecoderConfig, DecoderLM

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32, "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}


def test_a_subclass_is_not_claimed_by_its_base_family():
    import torch

    class WithHead(DecoderLM):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.value_head = torch.nn.Linear(cfg.hidden_size, 1)

    plain = DecoderLM(DecoderConfig.from_hf(TINY))
    assert families.family_for_model(plain).name == "decoder"
    with pytest.raises(ConfigError, match="no checkpoint family knows how to save a WithHead"):
        families.family_for_model(WithHead(DecoderConfig.from_hf(TINY)))


@pytest.fixture()
def module_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("hdepth_mod_")]:
        del sys.modules[name]


def test_a_missing_dependency_is_not_a_missing_registry_module(module_dir):
    (module_dir / "hdepth_mod_needs.py").write_text("import hdepth_absent_dependency\n")
    with pytest.raises(ModuleNotFoundError, match="hdepth_absent_dependency"):
        import_piece("hdepth_mod_needs", "checkpoint")
    with pytest.raises(ConfigError, match="names hdepth_mod_absent as a checkpoint module, and it does not exist"):
        import_piece("hdepth_mod_absent", "checkpoint")


def test_unregister_drops_the_cached_families(module_dir):
    source = textwrap.dedent("""
        from ocellus.hub.families import Family, OWN_NAMES
        from ocellus.models.text.decoder import DecoderLM
        def family(architecture=None):
            return Family(name={name!r}, model_class=DecoderLM, build=lambda cfg: None, keymap=OWN_NAMES,
                          hf_config=lambda m: {{}})
    """)
    (module_dir / "hdepth_mod_fam.py").write_text(source.format(name="first"))
    register(FamilyRecord("hdepth_fam", ("hdepth_fam",), ("HdepthModel",), checkpoint="hdepth_mod_fam"))
    try:
        assert families.family_for_config({"architectures": ["HdepthModel"]}).name == "first"
    finally:
        unregister("hdepth_fam")
    assert not any(ref.module == "hdepth_mod_fam" for ref in families._LOADED)
    (module_dir / "hdepth_mod_fam.py").write_text(source.format(name="second"))
    del sys.modules["hdepth_mod_fam"]
    register(FamilyRecord("hdepth_fam", ("hdepth_fam",), ("HdepthModel",), checkpoint="hdepth_mod_fam"))
    try:
        assert families.family_for_config({"architectures": ["HdepthModel"]}).name == "second"
    finally:
        unregister("hdepth_fam")
