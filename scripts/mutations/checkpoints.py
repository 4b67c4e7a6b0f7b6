"""Training checkpoints (ocellus/train/state.py, the Trainer's resume): atomic switches, damaged files."""
from mutations import Mutation

T = ["tests/unit/test_checkpoint_state.py"]
STATE = "ocellus/train/state.py"

MUTATIONS = [
    Mutation("checkpoints: re-save renames onto the existing step (no new name)", STATE,
             "    while final.exists():", "    while False:", T),
    Mutation("checkpoints: the replaced copy is never removed", STATE,
             "        shutil.rmtree(old, ignore_errors=True)", "        pass", T),
    Mutation("checkpoints: files not fsynced before the rename", STATE,
             "    _fsync_dir_files(tmp)\n", "", T),
    Mutation("checkpoints: state.json not validated", STATE,
             '    _check_state(state, path / "state.json")\n', "", T),
    Mutation("checkpoints: a bool passes as the step", STATE,
             "or isinstance(state[key], bool)", "or False", T),
    Mutation("checkpoints: a torn metrics line is kept on resume", "ocellus/train/trainer.py",
             "        return math.inf\n    return step if", "        return 0\n    return step if", T),
]
MUTATIONS.append(Mutation("checkpoints: a fresh run appends to the earlier run's log", "ocellus/train/trainer.py",
                          "            if not resumed:\n                self._start_clean()\n", "", T))

# -- checkpoint directories as untrusted input (ocellus/hub/checkpoint_dir.py)
U = ["tests/unit/test_checkpoint_untrusted.py"]
DIR = "ocellus/hub/checkpoint_dir.py"
MUTATIONS += [
    Mutation("checkpoints: a config.json list is returned as the config", DIR,
             "    if not isinstance(data, dict):\n", "    if False:\n", U),
    Mutation("checkpoints: malformed JSON escapes as ValueError", DIR,
             "    except (OSError, ValueError) as e:\n        raise CheckpointError(f\"cannot read",
             "    except OSError as e:\n        raise CheckpointError(f\"cannot read", U),
    Mutation("checkpoints: a path resolving outside the directory is read", DIR,
             "    if not path.resolve().is_relative_to(root):", "    if False:", U),
    Mutation("checkpoints: symlinks are not followed before the containment check", DIR,
             "    if not path.resolve().is_relative_to(root):",
             "    if not path.absolute().is_relative_to(root):", U),
    Mutation("checkpoints: a hub cache snapshot is confined to itself (its blob links refused)", DIR,
             "        return directory.parent.parent\n", "        return directory\n", U),
    Mutation("checkpoints: the index's weight_map is not validated", "ocellus/hub/safetensors_io.py",
             "        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):",
             "        if weight_map is None:", U),
    Mutation("checkpoints: index shards are not confined to the directory", "ocellus/hub/safetensors_io.py",
             "        files = [inside(path, f) for f in sorted(set(weight_map.values()))]",
             "        files = [path / f for f in sorted(set(weight_map.values()))]", U),
    Mutation("checkpoints: an unknown model_type is built anyway", "ocellus/hub/families.py",
             "    check_model_type(cfg, where)\n    archs", "    archs", U),
    Mutation("checkpoints: BLIP-2's processor reads config.json unchecked", "ocellus/models/families/blip2/processor.py",
             '    cfg = read_json_object(directory / "config.json") or {}',
             '    cfg = __import__("json").loads((directory / "config.json").read_text())', U),
]

# -- export after FSDP training: full tensors gathered to rank 0, a plain copy exported (ocellus/train/run.py)
FSDP = ["tests/distributed/test_fsdp_export.py"]
MUTATIONS += [
    Mutation("checkpoints: FSDP export saves the sharded model itself", "ocellus/train/run.py",
             "    path, plain = None, exportable(recipe, model, tok, info, task)", "    path, plain = None, model", FSDP),
    Mutation("checkpoints: FSDP export writes the rebuilt model without the trained tensors", "ocellus/train/run.py",
             "    plain.load_state_dict(merged_state_dict(model, state))\n", "", FSDP),
    Mutation("checkpoints: a gathered state's LoRA adapters are dropped, not folded", "ocellus/nn/lora.py",
             '            state[prefix + "weight"] = (state[prefix + "weight"] + (b @ a) * mod.scaling).detach()',
             '            state[prefix + "weight"] = state[prefix + "weight"].detach()',
             ["tests/unit/test_lora_scaling.py", *FSDP]),
]
