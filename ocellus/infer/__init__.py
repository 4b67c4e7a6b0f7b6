"""Generation engine: sampling, beam search, KV cache, batching, streaming."""
from ocellus.infer.generate import GenerationConfig, generate, stream

__all__ = ["GenerationConfig", "generate", "stream"]
