"""llm-compressor's GPTQ on a model folder and our calibration windows (run with llm-compressor's
own interpreter; its pins clash with ours). Writes a compressed-tensors folder.

    /path/to/llmc/bin/python peers/llmc_gptq.py MODEL CALIB.safetensors OUT BITS GROUP
"""
from __future__ import annotations

import json
import sys
import time

import torch
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main(model_dir: str, calib_file: str, out: str, bits: int, group: int) -> None:
    ids = load_file(calib_file)["input_ids"]
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    recipe = GPTQModifier(
        targets="Linear", ignore=["lm_head"], dampening_frac=0.01, block_size=128,
        config_groups={"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": bits, "type": "int", "symmetric": False, "group_size": group,
            "strategy": "group", "observer": "minmax"}}})
    t = time.time()
    oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(ids),
            max_seq_length=ids.shape[1], pipeline="sequential", shuffle_calibration_samples=False)
    seconds = time.time() - t
    model.save_pretrained(out, save_compressed=True)
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
