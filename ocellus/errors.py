"""Typed errors. Every failure a user can cause raises one of these with a message that
names the problem (which field, which file, which limit) so it can be acted on; `positive_int(s)` is
the one check of size-like config fields and `required_fields` the one check that a config.json names what a
builder needs (the bottom layer, so every config class can use them)."""


class OcellusError(Exception):
    """Base class of every error Ocellus raises on purpose."""


class InputError(OcellusError, ValueError):
    """Bad user input: wrong shape/dtype, too long a prompt, an image that cannot be used."""


class ConfigError(OcellusError, ValueError):
    """A config (config.json, recipe, generation options) is invalid or unsupported."""


class CheckpointError(OcellusError):
    """A checkpoint cannot be read or does not match the model: missing/unexpected/mismatched keys,
    corrupt or truncated safetensors, an absent file."""


def positive_int(value, what: str, *, optional: bool = False, number: bool = False, error: type = ConfigError):
    """The one check of a size-like setting: `value` must be an int > 0 (a bool is not one; number=True:
    an int or float > 0; optional=True: None passes), else `error` (ConfigError by default) saying
    '<what> must be a positive int, got <value!r>' ('a positive number' with number=True). -> value."""
    if value is None and optional:
        return value
    kinds = (int, float) if number else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise error(f"{what} must be a positive {'number' if number else 'int'}, got {value!r}")
    return value


def positive_ints(config, names, label: str = "config field {!r}", **kw) -> None:
    """positive_int for each named field of `config` (an object's attributes, or a mapping's keys where an
    absent key reads as None); label is formatted with the field's name: 'BERT config field {!r}' ->
    "BERT config field 'hidden_size' must be a positive int, got 0". kw: positive_int's options."""
    for name in names:
        value = config.get(name) if isinstance(config, dict) else getattr(config, name)
        positive_int(value, label.format(name), **kw)


def required_fields(config: dict, names, what: str = "config.json", error: type = ConfigError) -> None:
    """Every one of `names` is a key of `config`, else `error` "<what> lacks required fields [...]" listing the
    missing ones in the order given."""
    missing = [k for k in names if k not in config]
    if missing:
        raise error(f"{what} lacks required fields {missing}")
