"""What a packed layer does while its weights live in a group (infer/prepack.py's float groups, prepack_int8.py's
int8 ones): any use that needs the real tensors (reading them, training, .to(), loading, deepcopy, saving the live
tensors) unpacks the whole group first, after which the layer is its plain class again and the call repeats."""
from __future__ import annotations

import copy

from torch import nn


class PackedMember:
    """Mixin placed before the plain layer class (PackedLinear(PackedMember, nn.Linear)). `REAL` names the attributes
    whose read unpacks; `_write_dense` puts the layer's dense tensors into a state dict from the group's packed form."""

    REAL: tuple[str, ...] = ()

    def __getattr__(self, name: str):
        if name in type(self).REAL:                      # whoever reads the real tensors gets them
            self.group.unpack()                          # (self is the plain layer from here: no super())
        return nn.Module.__getattr__(self, name)

    def train(self, mode: bool = True):
        if mode:
            self.group.unpack()
        return nn.Module.train(self, mode)

    def _apply(self, fn, recurse: bool = True):
        self.group.unpack()                              # .to() / .half() / .cuda(): on the plain tensors
        return self._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if keep_vars:                                    # the live tensors asked for: make them real
            self.group.unpack()
            return self._save_to_state_dict(destination, prefix, keep_vars)
        nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
        self._write_dense(destination, prefix)

    def _write_dense(self, destination, prefix) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say how its dense tensors are saved")

    def _load_from_state_dict(self, *args, **kwargs):
        self.group.unpack()                              # load into the plain tensors; the next decode repacks
        return self._load_from_state_dict(*args, **kwargs)

    def __deepcopy__(self, memo):
        self.group.unpack()                              # a copy of the plain module (packed matrices do not copy)
        return copy.deepcopy(self, memo)
