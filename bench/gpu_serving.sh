#!/usr/bin/env bash
# The serving benchmarks on a GPU machine with no model hub: a 1B-parameter Llama-shaped model with random
# weights (bench/build_model.py) over SmolLM2's tokenizer, then bench/serve_throughput.py (the built-in server
# against one-at-a-time generate) and bench/serve_adapters.py (8 requests over 4 adapters against 8 on one).
#
#   bash bench/gpu_serving.sh TOKENIZER_DIR OUT_DIR [SIZE]
#
# TOKENIZER_DIR holds a tokenizer with a chat template (save SmolLM2's once where the embedded model is
# installed: models.load_tokenizer(...).save_pretrained(DIR)). Results go to OUT_DIR/*.txt.
set -euo pipefail
tokenizer=$1
out=$2
size=${3:-1b}
model=/tmp/hone-bench-llama-$size
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' | tee -a "$out/gpu.txt"
[ -f "$model/model.safetensors" ] || python3 bench/build_model.py --out "$model" --size "$size" --tokenizer "$tokenizer"
python3 bench/serve_throughput.py --model "$model" --runs 3 --requests 8 2> "$out/serve_throughput.log" \
  | tee "$out/serve_throughput.txt"
python3 bench/serve_adapters.py --model "$model" --runs 3 2> "$out/serve_adapters.log" | tee "$out/serve_adapters.txt"
