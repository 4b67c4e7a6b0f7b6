"""What a packed layer does while its weights live in a group (infer/prepack.py's float groups, prepack_int8.py's
int8 ones): any use that needs the real tensors (reading them, training, .to(), loading, deepcopy, saving the live
tensors) unpacks the whole group first, after which the layer is its plain class again and the call repeats; and
which layers pack together (fusion_plan), the same for both."""
from __future__ import annotations

import copy

import torch
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


def fusion_plan(model: nn.Module, fused: dict, packable, alike) -> list[tuple[tuple, nn.Module | None, object]]:
    """Which layers of `model` pack together: for each module whose type `fused` names ({type: (hook, names)}:
    an attention's q|k|v, an MLP's gate|up), its named layers as one group when every one is `packable`, they are
    `alike` (one matrix can hold them) and none carries a forward hook (a fused call would skip it); then every
    other packable layer alone. -> [(members, owner or None, hook or None)]."""
    groups, taken = [], set()
    for owner in model.modules():
        hook, names = fused.get(type(owner), (None, ()))
        members = [getattr(owner, n, None) if n in owner._modules else None for n in names]
        if names and all(m is not None and packable(m) for m in members) and alike(members) \
                and not any(m._forward_hooks or m._forward_pre_hooks for m in members):
            groups.append((tuple(members), owner, hook))
            taken.update(id(m) for m in members)
    for m in model.modules():
        if id(m) not in taken and packable(m):
            groups.append(((m,), None, None))
    return groups


def pack_groups(plan, packed_class, packed_already, make_group) -> None:
    """Make each planned group (members, owner, hook, *extra) unless `packed_already(group, members, owner)` says
    its members are packed that way now; a member packed another way is unpacked (its whole group) first."""
    for members, owner, hook, *extra in plan:
        g = members[0].group if isinstance(members[0], packed_class) else None
        if g is not None and g.members == members and g.owner is owner and packed_already(g):
            continue
        for m in members:
            if isinstance(m, packed_class):
                m.group.unpack()
        make_group(members, owner, hook, *extra)


def unpack_all(model: nn.Module, packed_class) -> nn.Module:
    """Every layer of `model` packed as `packed_class` back to its plain class. Returns the model."""
    for m in list(model.modules()):
        if isinstance(m, packed_class):
            m.group.unpack()
    return model


def fused_bias(group, biases: list):
    """A fused group's members' biases as one [sum out] tensor, kept on the group (group.bias, group._bias_key): a
    small copy, remade when one of them changes (a new tensor or an in-place update). None when they have none."""
    if len(biases) == 1 or biases[0] is None:
        return biases[0]
    key = [(id(b), b._version) for b in biases]
    if key != group._bias_key:
        with torch.inference_mode(False), torch.no_grad():
            group.bias, group._bias_key = torch.cat(biases), key
    return group.bias
