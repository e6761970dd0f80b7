"""Show one generation before and after the quickstart's fine-tune (used by scripts/quickstart.sh).

Loads the base model the way the trainer did (through kubetune_trainer.fetch,
so the GGUF file's cached Hugging Face conversion in the run's scratch folder
is reused, not converted again), answers the first eval ticket greedily,
then loads the exported LoRA adapter on top and answers it again.

    python scripts/quickstart_sample.py examples/quickstart-cpu.yaml --scratch DIR
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest")
    parser.add_argument("--scratch", required=True, help="the scratch folder of node 0 of the run")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the overrides given to kubetune run")
    parser.add_argument("--output", help="the --output given to kubetune run")
    args = parser.parse_args()

    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # peft imports it; its CPU kernel notice is noise here
    warnings.filterwarnings("ignore", category=FutureWarning)

    import torch
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()

    from kubetune_api.spec import load_job
    from kubetune_operator.localrun import load_manifest, parse_overrides
    from kubetune_trainer import fetch

    torch.set_num_threads(os.cpu_count() or 1)
    overrides = parse_overrides(args.set)
    if args.output:
        overrides["spec.output.uri"] = args.output
    job = load_job(load_manifest(args.manifest, overrides))
    spec = job.spec
    output = Path(spec.output.uri)
    adapter = output / "final" / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        print(f"no adapter at {adapter}: did the run finish?", file=sys.stderr)
        return 1
    model_dir = fetch.resolve_model(spec, args.scratch)
    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    base.eval()

    row = json.loads(Path(spec.dataset.eval).read_text().splitlines()[0])
    prompt_msgs = row["messages"][:-1]
    enc = tok.apply_chat_template(prompt_msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)

    def answer(model) -> str:
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    before = answer(base)
    tuned = PeftModel.from_pretrained(base, adapter)
    tuned.eval()
    after = answer(tuned)

    user = next(m["content"] for m in prompt_msgs if m["role"] == "user")
    print(f"sample ticket:    {user}")
    print(f"expected answer:  {row['messages'][-1]['content']}")
    print(f"before fine-tune: {before!r}")
    print(f"after fine-tune:  {after!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
