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
