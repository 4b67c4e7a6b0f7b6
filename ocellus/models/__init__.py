"""Model definitions: text decoders/encoders, vision towers, connectors, composed VLMs."""
