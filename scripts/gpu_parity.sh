#!/usr/bin/env bash
# The parity suite and attend's branch tests on a CUDA machine.
#
#   scripts/gpu_parity.sh            # on a machine with a GPU (the venv active or .venv present)
#   OCELLUS_DEVICE=cpu scripts/gpu_parity.sh   # the same files on CPU (what CI runs by default)
#
# OCELLUS_DEVICE=cuda makes tests/parity/conftest.py run each parity test with torch's default device
# set to the GPU (TF32 off), so ours and transformers' models and every input live there and the CUDA-only
# paths (attend's K/V-expanding GQA branch, CUDA SDPA kernels) are the ones compared. The attention branch
# tests check every path of attend against attention written out by hand: on CPU with the branch switch,
# and on the GPU itself (test_cuda_paths_equal_written_out_attention, skipped without one). Files that compare numpy / PIL preprocessing (image, processor, tokenizer,
# scheduler) do not touch a model and stay on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export OCELLUS_DEVICE="${OCELLUS_DEVICE:-cuda}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
if [ "$OCELLUS_DEVICE" != cpu ]; then
  python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "OCELLUS_DEVICE=cuda but torch sees no GPU")'
fi
MODEL_PARITY=(
  tests/parity/test_decoder_parity.py tests/parity/test_generate_parity.py tests/parity/test_vit_parity.py
  tests/parity/test_clip_parity.py tests/parity/test_bert_parity.py tests/parity/test_llava_parity.py
  tests/parity/test_llava_next_parity.py tests/parity/test_blip2_parity.py tests/parity/test_internvl_parity.py
  tests/parity/test_qwen2_vl_parity.py
)
status=0
echo "== model parity on $OCELLUS_DEVICE"
python -m pytest -q "${MODEL_PARITY[@]}" "$@" || status=1
echo "== preprocessing parity (CPU)"
OCELLUS_DEVICE=cpu python -m pytest -q tests/parity/test_image_parity.py tests/parity/test_processor_parity.py \
  tests/parity/test_tokenizer_parity.py tests/parity/test_scheduler_parity.py "$@" || status=1
echo "== attend's GQA branches vs written-out attention (CPU with the switch, and the GPU's own paths)"
OCELLUS_DEVICE=cpu python -m pytest -q tests/properties/test_attend_branches.py tests/properties/test_attention.py "$@" || status=1
exit $status
