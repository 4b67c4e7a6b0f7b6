"""Contrastive models: CLIP and SigLIP dual encoders (clip.py, siglip.py), MoCo (moco.py)."""
