#!/usr/bin/env bash
# Train one vision-language family on the shapes world with its shipped recipes, then evaluate it on
# held-out scenes (the eval seed; none of these scenes is trained on):
#
#   scripts/train_family.sh FAMILY      FAMILY: llava_next blip2 minigpt4 qwen_vl internvl qwen2_vl
#                                               qwen2_5_vl flamingo xgen_mm   (llava: scripts/make_default_model.sh)
#                                               qwen_vl_ground: qwen_vl's chain, then its 7 grounding legs
#
# Needs the two pretrained parts every family shares, runs/llava_tiny_shapes/{text,vit}/model (steps 1-2
# of scripts/make_default_model.sh). Each recipe writes its own out_dir (runs/<family>...); the evals
# go next to the final model as eval_shapes_vqa.json (n = 500) and, for the families trained to ground,
# eval_shapes_grounding.json (n = 200). Wall time per step of the chain: <out_dir>/times.txt.
# Threads: OMP_NUM_THREADS as set (default: every core).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
family=${1:?usage: scripts/train_family.sh FAMILY}
for part in text vit; do
  [ -f "runs/llava_tiny_shapes/$part/model/config.json" ] || {
    echo "runs/llava_tiny_shapes/$part/model is missing: run steps 1-2 of scripts/make_default_model.sh" >&2; exit 2; }
done

blip2_chain="blip2_tiny_shapes/stage1 blip2_tiny_shapes/stage2 blip2_tiny_shapes/vqa blip2_tiny_shapes/vqa2"
case $family in
  blip2)    chain="$blip2_chain";;
  minigpt4) chain="$blip2_chain minigpt4_tiny_shapes/stage1 minigpt4_tiny_shapes/stage2 minigpt4_tiny_shapes/vqa";;
  qwen_vl)  # box-head ViT, captions, QA (boxes: ground.yaml after)
            chain="qwen_vl_tiny_shapes/vit qwen_vl_tiny_shapes/pretrain qwen_vl_tiny_shapes/qa qwen_vl_tiny_shapes/qa2";;
  qwen_vl_ground)   # the same, then boxes: ground.yaml and six more legs like it (grounding 58% at the end, colour 86.9)
            chain="qwen_vl_tiny_shapes/vit qwen_vl_tiny_shapes/pretrain qwen_vl_tiny_shapes/qa qwen_vl_tiny_shapes/qa2"
            for leg in "" 2 3 4 5 6 7; do chain="$chain qwen_vl_tiny_shapes/ground$leg"; done;;
  qwen2_vl) chain="qwen2_vl_tiny_shapes/vit qwen2_vl_tiny_shapes/train qwen2_vl_tiny_shapes/ground qwen2_vl_tiny_shapes/ground2 qwen2_vl_tiny_shapes/ground3 qwen2_vl_tiny_shapes/ground4";;   # scene-pretrained ViT, QA, then grounding
  qwen2_5_vl) chain="qwen2_5_vl_tiny_shapes/vit qwen2_5_vl_tiny_shapes/train";;   # its own native-resolution ViT, scene-pretrained
  llava_next|internvl|flamingo|xgen_mm) chain="${family}_tiny_shapes/train";;
  *) echo "unknown family $family" >&2; exit 2;;
esac

out=""
for recipe in $chain; do
  out=$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["train"]["out_dir"])' "recipes/$recipe.yaml")
  if [ -f "$out/model/config.json" ] && [ -z "${FORCE:-}" ]; then
    echo "$recipe: $out/model exists, kept (FORCE=1 retrains it)"; continue
  fi
  mkdir -p "$out"
  # The long vision-language legs log held-out accuracy (n = 200) every 500 steps: the curves of
  # docs/VLM_COMPARISON.md (scripts/compare_bridges.py). Set in the recipe itself it would also run in the tests'
  # few-step runs of these recipes; other tasks (a ViT, a Q-Former stage 1) have no such eval.
  curve=$(python -c 'import sys, yaml; r = yaml.safe_load(open(sys.argv[1]))
print("train.eval_every=500" if r["task"] == "vlm" and r["train"]["max_steps"] >= 1000 and "eval_every" not in r["train"] else "")' "recipes/$recipe.yaml")
  start=$(date +%s.%N)
  ocellus train "recipes/$recipe.yaml" train.progress=false $curve
  end=$(date +%s.%N)
  awk -v n="$recipe" -v a="$start" -v b="$end" 'BEGIN { printf "%-36s %7.1f s\n", n, b - a }' | tee -a "$out/times.txt"
done

ocellus eval --model "$out/model" --task shapes-vqa --n 500 --out "$out/eval_shapes_vqa.json"
case $family in
  qwen_vl|qwen_vl_ground|qwen2_vl|qwen2_5_vl)
    ocellus eval --model "$out/model" --task shapes-grounding --n 200 --out "$out/eval_shapes_grounding.json";;
esac
