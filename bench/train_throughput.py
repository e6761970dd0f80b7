#!/usr/bin/env python
"""Training throughput: kubetune's trainer against a plain Hugging Face Trainer script.

Same model (a Llama-style config with random weights), same data (text rows whose
token lengths follow a log-normal distribution clipped to [--min-len, --max-len]),
same machine, same run. Every arm trains exactly one epoch over the *same*
training samples in the *same* number of optimizer steps:

- (a) ``hf``: a Trainer script as users write it: tokenize, pad each batch to its
  longest sample (``DataCollatorForLanguageModeling``), no packing,
  ``--batch`` samples per step, same LoRA config and hyperparameters as kubetune;
- (b) ``kubetune``: ``python -m kubetune_trainer`` (its ``main``, in-process in
  the arm's subprocess) on a FineTuneJob manifest with kubetune's defaults;
- (c) ``kubetune`` with one speed feature toggled: packing off, gradient
  checkpointing off, Liger kernels on (only where importable and wired).

Equal steps *and* equal samples: the number of training rows is chosen (with the
trainer's own ``data.encode_rows`` and ``data.pack``) so that ``--batch`` samples
per step and ``G`` packed rows per step both give exactly ``--steps`` steps over
the same rows; both counts are checked in the output.

Each arm runs in its own subprocess (clean peak memory: RSS high-water mark
minus RSS after imports on CPU, ``torch.cuda.max_memory_allocated`` on GPU).
Tokens/s counts real (non-padding) tokens over the training loop, measured the
same way for every arm: the Trainer's ``num_input_tokens_seen`` (non-padding)
over the time between its ``on_train_begin`` and ``on_train_end`` callbacks, in
wall-clock time and in the process's CPU time (the robust figure on a machine
shared with other work; see ``train_clock``). After training, every arm's final model is scored on
the same held-out rows by the same code (kubetune's exact token-weighted
``evaluate.eval_loss``, one sample at a time, which also gives a paired standard
error). The baseline is trained twice (second seed) to measure run-to-run noise.

The last line printed is ``speedup: X.XX`` = tokens/s of (b) / tokens/s of (a).

    python bench/train_throughput.py                  # CPU default ("small"), a few minutes
    python bench/train_throughput.py --size tiny --arms hf,kubetune --no-noise   # smoke, seconds
    python bench/train_throughput.py --size 1b --method full                      # GPU (bf16)
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Llama-style shapes. "small" is the CPU default (a few minutes on 2 cores): hidden 384 keeps
# the attention share of the FLOPs (12·L·d·s against 4·N for LoRA) within the range of real
# 1-8B models at their sequence lengths, rather than a toy whose cost is all attention.
SIZES = {
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=4, intermediate=176, vocab=None,
                 max_len=256, min_len=16, median=48, steps=3, batch=4, eval_rows=8),
    "small": dict(hidden=384, layers=4, heads=6, kv_heads=6, intermediate=1024, vocab=None,
                  max_len=1024, min_len=32, median=128, steps=10, batch=8, eval_rows=32),
    # TinyLlama-1.1B's shape
    "1b": dict(hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632, vocab=32000,
               max_len=2048, min_len=32, median=256, steps=24, batch=8, eval_rows=64),
}
ARMS = ("hf", "kubetune", "kubetune-no-packing", "kubetune-gc", "kubetune-liger")
NOISE_ARM = "hf-seed2"
SIGMA = 1.0  # log-normal sigma of the sample lengths: a long tail, most samples short


# ------------------------------------------------------------------ setup (parent)
def build_model_dir(path: Path, size: dict, seed: int, cuda: bool) -> int:
    """Save a random-weight Llama and the tiny BPE tokenizer as a Hugging Face folder; returns the parameter count.

    An existing folder (``--model-dir``, e.g. shared by gpu_check.sh's LoRA and full runs) is reused.
    """
    import torch
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    from kubetune_trainer import tiny

    if (path / "config.json").exists():
        with torch.device("meta"):
            return sum(p.numel() for p in LlamaForCausalLM(AutoConfig.from_pretrained(path)).parameters())
    tok = tiny.build_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=size["vocab"] or len(tok),
        hidden_size=size["hidden"],
        intermediate_size=size["intermediate"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["kv_heads"],
        max_position_embeddings=max(2048, size["max_len"]),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.device("cuda" if cuda else "cpu"):  # random init of 1B parameters is minutes on a CPU
        model = LlamaForCausalLM(cfg)
    if cuda:
        model = model.to(torch.bfloat16)  # what both arms train in on GPU; half the bytes to write and read
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def word_tokens(tok) -> list[str]:
    """Words that are one token each with a leading space (so a text of k words is about k tokens)."""
    words = []
    for piece in tok.get_vocab():
        w = piece[1:]
        if piece.startswith("\u0120") and w.isalpha() and len(w) >= 3 and len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1:
            words.append(w)
    return sorted(words)


def make_texts(words: list[str], n: int, seed: int, median: float, lo: int, hi: int) -> list[str]:
    """n texts from a fixed bigram chain (learnable structure), lengths log-normal, clipped to [lo, hi] tokens."""
    table = random.Random(1234)  # the same language for train and eval rows
    successors = {w: table.sample(words, 4) for w in words}
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        length = int(min(hi, max(lo, round(rng.lognormvariate(math.log(median), SIGMA)))))
        w = rng.choice(words)
        out = [w]
        for _ in range(length - 2):  # one token per " word", plus EOS: `length` tokens
            w = rng.choice(successors[w]) if rng.random() < 0.9 else rng.choice(words)
            out.append(w)
        texts.append(" " + " ".join(out))
    return texts


def encode(texts: list[str], tok, max_len: int) -> list[dict]:
    """kubetune's own tokenization and masking (data.encode_rows), as its trainer will do it."""
    from kubetune_api.spec import DatasetSpec
    from kubetune_trainer import data

    spec = DatasetSpec.model_validate({"train": "unused", "maxSeqLength": max_len})
    samples, _ = data.encode_rows([{"text": t} for t in texts], "text", tok, spec)
    return samples


def plan_rows(samples: list[dict], steps: int, batch: int, max_len: int) -> tuple[int, int, int, int]:
    """(rows N, baseline batch B, packed rows per step G, packed rows P) with ceil(N/B) == ceil(P/G) == steps.

    The first N samples are the training set of every arm: the baseline takes B samples
    per step, kubetune packs the same N samples into P rows and takes G rows per step.
    Rows per step are whole numbers, so N is searched near steps x batch (B may move by
    a sample or two) until both arms need exactly ``steps`` steps for one epoch.
    """
    from kubetune_trainer import data

    target = steps * batch
    candidates = sorted(range(steps, len(samples) + 1), key=lambda n: (abs(n - target), n))
    for n in candidates:
        b = math.ceil(n / steps)
        if math.ceil(n / b) != steps:
            continue
        p = len(data.pack(samples[:n], max_len))
        g = math.ceil(p / steps)
        if math.ceil(p / g) == steps:
            return n, b, g, p
    raise SystemExit(f"cannot split the data into {steps} equal steps for both arms; try another --steps or --batch")


def write_jsonl(path: Path, texts: list[str]) -> None:
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


def liger_status() -> tuple[bool, str]:
    """Whether a Liger arm would measure anything: the package imports and the trainer uses the flag."""
    if importlib.util.find_spec("liger_kernel") is None:
        return False, "not available: liger-kernel is not installed (it needs CUDA and triton)"
    import kubetune_trainer.model as model_mod
    import kubetune_trainer.train as train_mod

    if not any("liger" in inspect.getsource(m).lower() for m in (train_mod, model_mod)):
        return False, "not measured: training.ligerKernels is accepted by the spec but not used by the trainer yet"
    return True, ""


# -------------------------------------------------------------------- the arms
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class MemoryMeter:
    """Peak memory of what runs between start() and stop(): CUDA allocator peak, else RSS high-water mark delta."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def start(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = rss_bytes()

    def stop(self) -> int:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()  # absolute: model, optimizer state, activations
        return max(0, peak_rss_bytes() - self.base)


def train_clock():
    """A TrainerCallback timing the training loop in wall-clock and in this process's CPU time.

    CPU time (all threads of the process) is what the arm itself computed; unlike wall-clock
    time it hardly moves when other processes load the machine, so it is the robust figure
    on a shared CPU box. Both arms are timed by this same callback.
    """
    from transformers import TrainerCallback

    class TrainClock(TrainerCallback):
        wall = cpu = None

        def on_train_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_end(self, args, state, control, **kw):
            self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0

    return TrainClock()


def run_hf_baseline(cfg: dict, meter: MemoryMeter) -> dict:
    """(a) The script a user writes from the Hugging Face docs."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

    meter.start()
    set_seed(cfg["seed"])
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_dir"])
    dataset = load_dataset("json", data_files=cfg["train"], split="train")
    dataset = dataset.map(lambda b: tokenizer([t + tokenizer.eos_token for t in b["text"]]), batched=True,
                          remove_columns=["text"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], dtype=torch.bfloat16 if cfg["bf16"] else torch.float32)
    if cfg["method"] == "lora":
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=cfg["out"],
        per_device_train_batch_size=cfg["batch"],
        num_train_epochs=1,
        learning_rate=cfg["lr"],
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=cfg["bf16"],
        seed=cfg["seed"],
        include_num_input_tokens_seen="non_padding",
        use_cpu=not cfg["cuda"],
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), processing_class=tokenizer)
    clock = train_clock()
    trainer.add_callback(clock)
    result = trainer.train()
    peak = meter.stop()
    trainer.save_model(os.path.join(cfg["out"], "final"))
    return {
        "steps": trainer.state.global_step,
        "tokens": trainer.state.num_input_tokens_seen,
        "train_seconds": clock.wall,
        "train_cpu_seconds": clock.cpu,
        "hf_train_runtime": result.metrics["train_runtime"],
        "peak_memory": peak,
        "final_dir": os.path.join(cfg["out"], "final"),
        "adapter": cfg["method"] == "lora",
        "flops_per_token": _flops_per_token(trainer.model, cfg),
    }


def kubetune_job(cfg: dict) -> dict:
    training = {
        "epochs": 1,
        "globalBatchSize": cfg["global_batch"],
        "microBatchSize": 1,  # kubetune's default
        "seed": cfg["seed"],
        "precision": "bf16" if cfg["bf16"] else "fp32",
    }
    if cfg["gradient_checkpointing"] is not None:  # None: kubetune's default, the memory plan decides
        training["gradientCheckpointing"] = cfg["gradient_checkpointing"]
    if cfg["liger"]:
        training["ligerKernels"] = True
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bench"},
        "spec": {
            "model": {"source": cfg["model_dir"]},
            # evalFraction 0: every arm trains on the same rows; all are scored afterwards on one held-out set
            "dataset": {"train": cfg["train"], "maxSeqLength": cfg["max_len"], "packing": cfg["packing"], "evalFraction": 0},
            "method": {"type": cfg["method"]},
            "training": training,
            "distributed": {"gpusPerNode": 1 if cfg["cuda"] else 0},
            "output": {"uri": cfg["out"]},
        },
    }


def run_kubetune(cfg: dict, meter: MemoryMeter) -> dict:
    """(b)/(c) The trainer's real entry point, ``python -m kubetune_trainer --config job.yaml``, in this process."""
    import yaml

    from kubetune_trainer import train

    config = Path(cfg["out"]) / "job.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(kubetune_job(cfg)))
    # The same clock as the baseline's, added through the Trainer's public add_callback to the
    # trainer that kubetune's own build_trainer returns; nothing else about the run changes.
    clock = train_clock()
    build_trainer = train.build_trainer

    def build_trainer_with_clock(*a, **kw):
        trainer = build_trainer(*a, **kw)
        trainer.add_callback(clock)
        return trainer

    train.build_trainer = build_trainer_with_clock
    meter.start()
    rc = train.main(["--config", str(config)])
    peak = meter.stop()
    if rc != 0:
        raise SystemExit(f"kubetune trainer exited with {rc}")
    summary = json.loads((Path(cfg["out"]) / "final" / "summary.json").read_text())
    final = Path(cfg["out"]) / "final"
    adapter = cfg["method"] != "full"
    return {
        "steps": summary["steps"],
        "tokens": summary["tokensSeen"],
        "train_seconds": clock.wall,
        "train_cpu_seconds": clock.cpu,
        "hf_train_runtime": summary["trainRuntimeSeconds"],
        "peak_memory": peak,
        "final_dir": str(final / ("adapter" if adapter else "merged")),
        "adapter": adapter,
        "summary_mfu": summary.get("mfu"),
        "packed_rows": summary["data"]["train"]["packed_rows"],
        "gradient_checkpointing": summary.get("gradientCheckpointing"),
        "plan_estimate": (summary.get("memoryPlan") or {}).get("estimatedBytes"),  # the memory planner's peak
    }


def _flops_per_token(model, cfg: dict) -> float:
    from kubetune_trainer import flops

    return flops.model_flops_per_token(model, cfg["attention_context"])


def load_final(cfg: dict, result: dict):
    import torch
    from transformers import AutoModelForCausalLM

    if result["adapter"]:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], dtype=torch.float32)
        return PeftModel.from_pretrained(base, result["final_dir"], is_trainable=True)  # trainable: FLOPs count
    return AutoModelForCausalLM.from_pretrained(result["final_dir"], dtype=torch.float32)


def per_sample_eval(model, samples: list[dict], pad_id: int, device) -> list[tuple[float, int]]:
    """(loss sum, loss tokens) per held-out sample, with kubetune's exact token-weighted eval loss."""
    from kubetune_trainer import data, evaluate

    collator = data.Collator(pad_id)
    out = []
    for s in samples:
        r = evaluate.eval_loss(model, [s], collator, 1, device)
        out.append((r["eval_loss"] * r["eval_tokens"], r["eval_tokens"]))
    return out


def arm_main(cfg_path: str) -> None:
    """Entry point of one arm's subprocess: train, measure, score the final model, write JSON."""
    cfg = json.loads(Path(cfg_path).read_text())
    # everything either arm imports, before the memory baseline is taken
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    if cfg["kind"] == "kubetune":
        import deepspeed  # noqa: F401

        import kubetune_trainer.train  # noqa: F401
    meter = MemoryMeter(cfg["cuda"])
    result = run_hf_baseline(cfg, meter) if cfg["kind"] == "hf" else run_kubetune(cfg, meter)
    device = torch.device("cuda" if cfg["cuda"] else "cpu")
    model = load_final(cfg, result).to(device)
    if "flops_per_token" not in result:
        result["flops_per_token"] = _flops_per_token(model, cfg)
    result["eval"] = per_sample_eval(model, json.loads(Path(cfg["eval_samples"]).read_text()), cfg["pad_id"], device)
    Path(cfg["result"]).write_text(json.dumps(result))


# ------------------------------------------------------------------- the parent
def run_arm(name: str, cfg: dict, workdir: Path, threads: int, timeout: int) -> dict:
    cfg = dict(cfg, out=str(workdir / name), result=str(workdir / f"{name}.result.json"))
    shutil.rmtree(cfg["out"], ignore_errors=True)
    cfg_path = workdir / f"{name}.arm.json"
    cfg_path.write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               KUBETUNE_SCRATCH=str(workdir / name / "scratch"), KUBETUNE_PROGRESS_FILE=str(workdir / name / "progress.jsonl"),
               HF_DATASETS_CACHE=str(workdir / "hf-datasets-cache"), TRANSFORMERS_VERBOSITY="error")
    if not cfg["cuda"]:
        env["DS_ACCELERATOR"] = "cpu"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)  # a single process: the trainer makes its own rendezvous
    log = workdir / f"{name}.log"
    t0 = time.monotonic()
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, __file__, "--_arm", str(cfg_path)], env=env, cwd=REPO,
                           stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if p.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"arm {name} failed (exit {p.returncode}); log {log}:\n{tail}")
    result = json.loads(Path(cfg["result"]).read_text())
    result["wall_seconds"] = time.monotonic() - t0
    return result


def eval_stats(results: dict, a: str, b: str) -> tuple[float, float, float]:
    """(loss a, loss b, standard error of b − a) over the same held-out tokens (paired, ratio estimator)."""
    ea, eb = results[a]["eval"], results[b]["eval"]
    n = sum(t for _, t in ea)
    la, lb = sum(s for s, _ in ea) / n, sum(s for s, _ in eb) / n
    diff = lb - la
    resid = [(sb - sa) - diff * t for (sa, t), (sb, _) in zip(ea, eb)]
    m = len(resid)
    se = math.sqrt(sum(r * r for r in resid) * m / max(1, m - 1)) / n
    return la, lb, se


def base_eval_loss(cfg: dict) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], dtype=torch.float32)
    device = torch.device("cuda" if cfg["cuda"] else "cpu")
    ev = per_sample_eval(model.to(device), json.loads(Path(cfg["eval_samples"]).read_text()), cfg["pad_id"], device)
    return sum(s for s, _ in ev) / sum(t for _, t in ev)


def fmt_bytes(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="small", help="model and data preset (default small, for CPU)")
    ap.add_argument("--method", choices=("lora", "full"), default="lora", help="kubetune's default is lora")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    ap.add_argument("--no-noise", action="store_true", help=f"skip the second-seed baseline ({NOISE_ARM}) used as the noise estimate")
    ap.add_argument("--steps", type=int, help="optimizer steps (one epoch) per arm; default from --size")
    ap.add_argument("--batch", type=int, help="baseline samples per step; default from --size")
    ap.add_argument("--max-len", type=int, help="longest sample and kubetune's maxSeqLength; default from --size")
    ap.add_argument("--median", type=float, help="median sample length in tokens; default from --size")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="what every arm trains in; auto: bf16 on GPU, fp32 on CPU (bf16 on CPU: to compare the arms' bf16 numerics)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP threads per arm (CPU)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workdir", default="/tmp/kubetune-bench-throughput", help="scratch folder, emptied first")
    ap.add_argument("--model-dir", help="model folder to reuse (built there when missing); default: inside --workdir")
    ap.add_argument("--json", help="also write all results to this file")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per arm")
    ap.add_argument("--_arm", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._arm:
        arm_main(args._arm)
        return 0

    work = Path(args.workdir)
    if work.exists() and any(work.iterdir()) and not (work / ".kubetune-bench").exists():
        ap.error(f"--workdir {work} is not empty and was not made by this script; it would be emptied")

    import torch

    size = dict(SIZES[args.size])
    for k in ("steps", "batch", "max_len", "median"):
        if getattr(args, k) is not None:
            size[k] = getattr(args, k)
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    bf16 = cuda if args.precision == "auto" else args.precision == "bf16"
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(arms) - set(ARMS)
    if unknown:
        ap.error(f"unknown arms {sorted(unknown)}; choose from {','.join(ARMS)}")
    liger_ok, liger_why = liger_status() if "kubetune-liger" in arms else (False, "")
    if "kubetune-liger" in arms and (not liger_ok or not cuda):
        arms.remove("kubetune-liger")
        liger_why = liger_why or "not available: Liger kernels need a CUDA GPU"
    if not args.no_noise and "hf" in arms:
        arms.append(NOISE_ARM)

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / ".kubetune-bench").touch()
    t_setup = time.monotonic()
    model_dir = Path(args.model_dir) if args.model_dir else work / "model"
    n_params = build_model_dir(model_dir, size, args.seed, cuda)
    from transformers import AutoTokenizer

    from kubetune_trainer import flops

    tok = AutoTokenizer.from_pretrained(model_dir)
    words = word_tokens(tok)
    pool_texts = make_texts(words, 2 * size["steps"] * size["batch"], args.seed, size["median"], size["min_len"], size["max_len"])
    pool = encode(pool_texts, tok, size["max_len"])
    n, batch, per_step, packed_rows = plan_rows(pool, size["steps"], size["batch"], size["max_len"])
    write_jsonl(work / "train.jsonl", pool_texts[:n])
    train_samples = pool[:n]
    eval_samples = encode(make_texts(words, size["eval_rows"], args.seed + 1, size["median"], size["min_len"], size["max_len"]),
                          tok, size["max_len"])
    (work / "eval_samples.json").write_text(json.dumps(eval_samples))
    lengths = [len(s["input_ids"]) for s in train_samples]
    real_tokens = sum(lengths)
    padded_tokens = sum(max(lengths[i:i + batch]) * len(lengths[i:i + batch]) for i in range(0, n, batch))  # ~ any order
    context = flops.attention_context(lengths)

    common = dict(model_dir=str(model_dir), train=str(work / "train.jsonl"), eval_samples=str(work / "eval_samples.json"),
                  pad_id=tok.pad_token_id, cuda=cuda, bf16=bf16, method=args.method, seed=args.seed, max_len=size["max_len"],
                  lr=2e-4 if args.method == "lora" else 1e-5, attention_context=context)
    arm_cfgs = {
        "hf": dict(common, kind="hf", batch=batch),
        NOISE_ARM: dict(common, kind="hf", batch=batch, seed=args.seed + 1),
        "kubetune": dict(common, kind="kubetune", packing=True, gradient_checkpointing=None, liger=False, global_batch=per_step),
        "kubetune-no-packing": dict(common, kind="kubetune", packing=False, gradient_checkpointing=None, liger=False, global_batch=batch),
        "kubetune-gc": dict(common, kind="kubetune", packing=True, gradient_checkpointing=True, liger=False, global_batch=per_step),
        "kubetune-liger": dict(common, kind="kubetune", packing=True, gradient_checkpointing=None, liger=True, global_batch=per_step),
    }
    device_name = torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores, {args.threads} threads per arm"
    peak = flops.device_peak_flops() if cuda else None
    load = os.getloadavg()
    print(f"device: {device_name}; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"model: Llama-style, {n_params / 1e6:,.1f}M params (hidden {size['hidden']}, {size['layers']} layers), random weights, "
          f"{'bf16' if bf16 else 'fp32'}; method {args.method}")
    print(f"data: {n} training rows, {real_tokens:,} real tokens, lengths {min(lengths)}..{max(lengths)} "
          f"(median {sorted(lengths)[n // 2]}, log-normal sigma {SIGMA}); {len(eval_samples)} held-out rows")
    print(f"plan: {size['steps']} optimizer steps for every arm = 1 epoch; baseline {batch} samples/step "
          f"(padded to longest: ~{real_tokens / padded_tokens:.0%} of computed tokens are real); "
          f"kubetune packs into {packed_rows} rows of <= {size['max_len']} tokens, {per_step} rows/step")
    print(f"setup: {time.monotonic() - t_setup:.1f} s", flush=True)

    results = {}
    for name in arms:
        print(f"... {name}", flush=True)
        results[name] = run_arm(name, arm_cfgs[name], work, args.threads, args.timeout)
    base_loss = base_eval_loss(common)

    # ------------------------------------------------------------- report
    print()
    head = (f"{'arm':<20}{'packing':>8}{'grad-ckpt':>10}{'steps':>6}{'real tokens':>12}{'train s':>9}{'tokens/s':>10}"
            f"{'vs (a)':>8}{'cpu s':>8}{'tok/cpu-s':>10}{'vs (a)':>8}{'peak mem':>11}{'plan est':>11}{'MFU':>7}{'eval loss':>10}")
    print(head)
    print("-" * len(head))
    label = {"hf": "(a) hf", NOISE_ARM: "(a') hf, seed+1", "kubetune": "(b) kubetune",
             "kubetune-no-packing": "(c) no packing", "kubetune-gc": "(c) grad-ckpt on", "kubetune-liger": "(c) liger"}
    hf_tps = results["hf"]["tokens"] / results["hf"]["train_seconds"] if "hf" in results else None
    hf_tpc = results["hf"]["tokens"] / results["hf"]["train_cpu_seconds"] if "hf" in results else None
    for name, r in results.items():
        c = arm_cfgs[name]
        tps = r["tokens"] / r["train_seconds"]
        tpc = r["tokens"] / r["train_cpu_seconds"]
        r["tokens_per_second"], r["tokens_per_cpu_second"] = tps, tpc
        r["mfu"] = flops.mfu(r["flops_per_token"], tps, peak)
        loss = sum(s for s, _ in r["eval"]) / sum(t for _, t in r["eval"])
        r["eval_loss"] = loss
        packing = "-" if c["kind"] == "hf" else ("on" if c["packing"] else "off")
        gc = "off" if c["kind"] == "hf" else ("on" if r.get("gradient_checkpointing") else "off")
        if c["kind"] == "kubetune" and c["gradient_checkpointing"] is None:
            gc += " (plan)"
        rel = f"{tps / hf_tps:.2f}x" if hf_tps else "-"
        rel_cpu = f"{tpc / hf_tpc:.2f}x" if hf_tpc else "-"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        est = fmt_bytes(r["plan_estimate"]) if r.get("plan_estimate") else "-"
        print(f"{label[name]:<20}{packing:>8}{gc:>10}{r['steps']:>6}{r['tokens']:>12,}{r['train_seconds']:>9.1f}{tps:>10,.0f}"
              f"{rel:>8}{r['train_cpu_seconds']:>8.1f}{tpc:>10,.0f}{rel_cpu:>8}{fmt_bytes(r['peak_memory']):>11}{est:>11}{mfu:>7}{loss:>10.4f}")
    if liger_why:
        print(f"{'(c) liger':<20}{liger_why}")
    mem_kind = "torch.cuda.max_memory_allocated" if cuda else "peak RSS minus RSS after imports"
    print("plan est: the memory planner's peak per process for kubetune's arms (kubetune_api.memory; comparable to "
          "torch.cuda.max_memory_allocated on GPU, not to RSS on CPU)")
    print(f"peak mem: {mem_kind}; MFU: {'vs bf16 dense peak' if peak else 'n/a (no known GPU)'}; "
          f"eval loss of the untrained model: {base_loss:.4f}")

    steps = {r["steps"] for r in results.values()}
    tokens = {r["tokens"] for r in results.values()}
    same = len(steps) == 1 and len(tokens) == 1 and tokens == {real_tokens}
    print(f"same work in every arm: {'yes' if same else 'NO'} (steps {sorted(steps)}, real tokens {sorted(tokens)}, expected {real_tokens:,})")

    if "hf" in results and "kubetune" in results:
        la, lb, se = eval_stats(results, "hf", "kubetune")
        seed_noise = abs(eval_stats(results, "hf", NOISE_ARM)[1] - la) if NOISE_ARM in results else 0.0
        tol = 2 * max(se, seed_noise)
        verdict = "no worse (within noise)" if lb - la <= tol else "WORSE than the baseline"
        print(f"eval loss after the same {real_tokens:,} tokens: hf {la:.4f}, kubetune {lb:.4f}, difference {lb - la:+.4f}; "
              f"noise: paired s.e. {se:.4f}, seed-to-seed {seed_noise if NOISE_ARM in results else float('nan'):.4f}; "
              f"tolerance 2 x max = {tol:.4f} -> {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "load_before": load, "size": args.size,
                                               "method": args.method, "rows": n, "real_tokens": real_tokens,
                                               "results": {k: {kk: vv for kk, vv in v.items() if kk != "eval"} for k, v in results.items()},
                                               "base_eval_loss": base_loss}, indent=1))
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if "hf" in results and "kubetune" in results:
        print(f"speedup by CPU time (robust to other processes): "
              f"{results['kubetune']['tokens_per_cpu_second'] / results['hf']['tokens_per_cpu_second']:.2f}")
        print(f"speedup: {results['kubetune']['tokens_per_second'] / results['hf']['tokens_per_second']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
