"""Image generators, Ocellus' own format (the registry's "image_generator": VQ-VAE / VQGAN, diffusion, MaskGIT,
AR, SEED's codec): checkpoint.py (the Family); the models and their build spec are models/generative/."""
