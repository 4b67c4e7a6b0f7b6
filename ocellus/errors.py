"""Typed errors. Every failure a user can cause raises one of these with a message that
names the problem (which field, which file, which limit) so it can be acted on."""


class OcellusError(Exception):
    """Base class of every error Ocellus raises on purpose."""


class InputError(OcellusError, ValueError):
    """Bad user input: wrong shape/dtype, too long a prompt, an image that cannot be used."""


class ConfigError(OcellusError, ValueError):
    """A config (config.json, recipe, generation options) is invalid or unsupported."""


class CheckpointError(OcellusError):
    """A checkpoint cannot be read or does not match the model: missing/unexpected/mismatched keys,
    corrupt or truncated safetensors, an absent file."""
