"""The dry-run planner's per-GPU memory plan, checked against measured peak memory on the CPU.

For each model (tiny, small) it runs real training steps the way TRL's GRPO trains: TRL's fused LM head
(log-probs of the completion tokens, `add_fused_lm_head`), backward, and the Trainer's optimizer (torch
AdamW, fused), on a micro-batch of `--sequences` x (`--prompt` + `--completion`) tokens. It measures peak
memory and prints it next to the plan (`reasoner.rl.dryrun.plan_memory`, the rows a CPU run has: weights,
gradients, optimizer state, activations, backward working set, LM head; attention on the CPU is sdpa's
math kernel, which keeps the softmax probabilities, so the plan is made with attention="math"):

  peak RSS           the process's peak resident set over the steps (VmHWM, reset through
                     /proc/self/clear_refs just before them) minus the resident set before them, plus the
                     weights (resident before the steps): compared with the plan's total
  saved activations  bytes of the distinct tensors autograd saves in one forward (saved_tensors_hooks):
                     compared with the plan's activations row

    .venv/bin/python benchmarks/plan_memory.py                 # tiny and small, 3 steps each
    .venv/bin/python benchmarks/plan_memory.py --models tiny --json

Each model runs in a fresh subprocess so one run's freed memory cannot hide the next one's peak.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

DEFAULTS = {"tiny": dict(sequences=16, prompt=32, completion=96), "small": dict(sequences=4, prompt=32, completion=96)}


def _rss() -> tuple[int, int]:
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def measure(model_name: str, sequences: int, prompt: int, completion: int, steps: int, threads: int) -> dict:
    import gc

    import torch
    from trl.trainer.utils import add_fused_lm_head

    from reasoner.model import load_model
    from reasoner.rl.dryrun import Setup, plan_memory, shape_of

    torch.set_num_threads(threads)
    model, _ = load_model(model_name, dtype=torch.float32)
    add_fused_lm_head(model)
    model.train()
    length = prompt + completion
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, model.config.vocab_size, (sequences, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    labels[:, :prompt] = -100                       # TRL scores the completion tokens only
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    gc.collect()
    rss_before, _ = _rss()
    _reset_peak()
    for _ in range(steps):
        step()
    _, rss_peak = _rss()

    saved = saved_activation_bytes(model, input_ids, attention_mask, labels)

    shape = shape_of(model.config, model, 4)
    setup = Setup(sharding="single", gpus=1, gpu="h100", mfu=0.3, trainable=shape.total, lora=False, reference=False,
                  sequences=sequences, micro=sequences, prompt=prompt, completion=completion, checkpointing=False,
                  rollout="engine", attention="math")
    rows, _ = plan_memory(shape, setup)
    planned = {name: size for name, size, _ in rows if not name.startswith(("rollout", "runtime"))}
    plan_total = sum(planned.values())
    rss_measured = rss_peak - rss_before + weights
    return {"model": model_name, "parameters": shape.total, "sequences": sequences, "prompt": prompt,
            "completion": completion, "steps": steps, "plan": planned, "plan_total": plan_total,
            "measured_rss": rss_measured, "rss_vs_plan": rss_measured / plan_total - 1,
            "measured_saved": saved, "saved_vs_plan": saved / planned["activations"] - 1}


def saved_activation_bytes(model, input_ids, attention_mask, labels) -> int:
    """Bytes of the distinct tensors autograd saves in one forward (weights excluded): what the plan's
    'activations' row models."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    del out
    return sum(seen.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)      # internal: measure one model in this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, **DEFAULTS[args.one], steps=args.steps, threads=args.threads)))
        return 0
    results = []
    for name in args.models:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--threads",
                              str(args.threads)], capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(f"{name}: the measurement failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    mib = 2 ** 20
    for r in results:
        print(f"{r['model']} ({r['parameters'] / 1e6:.2f}M parameters, fp32, {r['sequences']} x "
              f"({r['prompt']} + {r['completion']}) tokens, {r['steps']} steps):")
        for name, size in r["plan"].items():
            print(f"  plan {name:<12} {size / mib:8.1f} MiB")
        print(f"  plan total        {r['plan_total'] / mib:8.1f} MiB")
        print(f"  measured peak RSS {r['measured_rss'] / mib:8.1f} MiB  ({r['rss_vs_plan']:+.1%} vs the plan's total)")
        print(f"  saved activations {r['measured_saved'] / mib:8.1f} MiB  ({r['saved_vs_plan']:+.1%} vs the plan's activations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
