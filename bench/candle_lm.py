#!/usr/bin/env python3
"""candle-lm against PyTorch + transformers on the CPU, same model, batch and sequence length, in one run.

    pip install torch transformers          # PyPI's torch: ~5.6 GB installed (its CUDA libraries come along;
                                            # `import torch` fails without them even on a CPU)
    cargo build --release -p candle-lm --example bench
    RTO_SMOLLM2_GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf python3 bench/candle_lm.py

Measures, for a tiny random Llama and (with RTO_SMOLLM2_GGUF) SmolLM2-135M dequantized to f32:
- training tokens/s: full fine-tuning steps (forward, backward, AdamW) on random tokens, f32;
- sampling tokens/s: batched greedy generation with the KV cache, prompt prefill included, f32;
- each side's peak resident memory (one process per measurement).
Both sides load the same HF directory (the GGUF is converted once by `bench convert`). One untimed warm-up step
comes first on both sides. The ratio is candle-lm's speed over PyTorch's (> 1: candle-lm is faster).
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "release", "examples", "bench")


def torch_worker(kind, model_dir, a, b, c):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    vocab = model.config.vocab_size
    if kind == "train":
        batch, seq, steps = a, b, c
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        ids = torch.randint(0, vocab, (batch, seq))

        def step():
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        tokens, seconds = batch * seq * steps, time.perf_counter() - t
    else:
        batch, prompt, new = a, b, c
        model.eval()
        ids = torch.randint(0, vocab, (batch, prompt))
        kw = dict(do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0)
        with torch.no_grad():
            model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)
            t = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
            seconds = time.perf_counter() - t
        tokens = (out.shape[1] - prompt) * batch
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tokens_per_s": tokens / seconds, "seconds": seconds, "peak_rss_mib": peak}))


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def tiny_model(path, layers, hidden):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2048, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--torch-worker":
        kind, model_dir, a, b, c = sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7])
        return torch_worker(kind, model_dir, a, b, c)
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides")
    args = ap.parse_args()
    try:
        import torch, transformers  # noqa: F401
    except ImportError as e:
        sys.exit(f"needs PyTorch and transformers from PyPI ({e}): pip install torch transformers")
    if not os.path.exists(BENCH):
        sys.exit("build first: cargo build --release -p candle-lm --example bench")
    # Same thread count on both sides: candle's rayon pool and torch's intra-op pool.
    os.environ["RAYON_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
    tmp = tempfile.mkdtemp(prefix="rto-bench-lm-")
    models = [("tiny llama (4 × 128, vocab 2048)", os.path.join(tmp, "tiny"), (8, 128, 10), (8, 32, 64))]
    tiny_model(models[0][1], layers=4, hidden=128)
    gguf = os.environ.get("RTO_SMOLLM2_GGUF")
    if gguf:
        smol = os.path.join(tmp, "smollm2")
        subprocess.run([BENCH, "convert", gguf, smol], check=True)
        models.append(("SmolLM2-135M (f32)", smol, (2, 128, 2), (4, 32, 32)))
    else:
        print("RTO_SMOLLM2_GGUF is not set: SmolLM2-135M skipped", file=sys.stderr)
    print(f"threads: {args.threads}; torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"| {'model':<34} | {'measure':<26} | {'candle-lm':>10} | {'PyTorch':>10} | {'ratio':>6} | {'peak MiB (ours / torch)':>24} |")
    print(f"|{'-' * 36}|{'-' * 28}|{'-' * 12}|{'-' * 12}|{'-' * 8}|{'-' * 26}|")
    for name, path, train, sample in models:
        for kind, shape, label in [("train", train, "train b{} × seq {} tok/s"), ("sample", sample, "sample b{} p{} +{} tok/s")]:
            ours = run([BENCH, kind, path, *map(str, shape)])
            ref = run([sys.executable, __file__, "--torch-worker", kind, path, *map(str, shape)])
            what = label.format(*shape)
            mem = f"{ours['peak_rss_mib']:.0f} / {ref['peak_rss_mib']:.0f}"
            print(f"| {name:<34} | {what:<26} | {ours['tokens_per_s']:>10.1f} | {ref['tokens_per_s']:>10.1f} | "
                  f"{ours['tokens_per_s'] / ref['tokens_per_s']:>6.2f} | {mem:>24} |", flush=True)


if __name__ == "__main__":
    main()
