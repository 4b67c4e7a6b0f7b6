"""Data: tokenizer, chat templates, image transforms, datasets, collation and packing."""
