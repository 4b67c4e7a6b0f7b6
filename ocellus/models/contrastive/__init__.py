"""Contrastive models: CLIP / SigLIP dual encoders (clip.py; their checkpoints: models/families/clip/, siglip/), MoCo (moco.py), ALBEF / BLIP
(albef.py, blip.py); the objectives they share (losses.py) and their momentum machinery (momentum.py)."""
