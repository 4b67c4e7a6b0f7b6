"""Contrastive models: CLIP / SigLIP dual encoders (clip.py, siglip.py), MoCo (moco.py), ALBEF / BLIP
(albef.py, blip.py); the objectives they share (losses.py) and their momentum machinery (momentum.py)."""
