from ocellus.models.text.decoder import DecoderConfig, DecoderLM

__all__ = ["DecoderConfig", "DecoderLM"]
