#!/usr/bin/env python3
"""rto's speed targets, each measured against a named reference in the same run (machines are shared and
noisy, so the ratio is what to read).

    cargo build --release && python3 bench/run.py [--stages 500] [--mib 512]

1. No-op re-run of a generated N-stage study (target: well under a second), against GNU make deciding that an
   equivalent N-target Makefile is up to date (`make -q`).
2. Hashing a large input file on a cold plan (sha256 through sha2's SHA-NI path), against coreutils
   `sha256sum`; and the warm plan, where the stat index answers without reading the file.
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTO = os.path.join(ROOT, "target", "release", "rto")


def timed(cmd, cwd, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def row(what, ours, ref_name, ref):
    print(f"| {what:<34} | {ours * 1000:>9.1f} ms | {ref_name:<22} | {ref * 1000:>9.1f} ms | {ours / ref:>6.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", type=int, default=500)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if not os.path.exists(RTO):
        sys.exit("build first: cargo build --release")
    tmp = tempfile.mkdtemp(prefix="rto-bench-")
    try:
        print(f"| {'measure':<34} | {'rto':>12} | {'reference':<22} | {'reference':>12} | {'ratio':>6} |")
        print(f"|{'-' * 36}|{'-' * 14}|{'-' * 24}|{'-' * 14}|{'-' * 8}|")

        # 1. No-op re-run.
        study = os.path.join(tmp, "study.toml")
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gen_study.py"), str(args.stages), study], check=True)
        subprocess.run([RTO, "run", "study.toml", "-j", "2"], cwd=tmp, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        mk = os.path.join(tmp, "Makefile")
        width = 10
        with open(mk, "w") as f:
            f.write(f"all: {' '.join(f'm{i}.out' for i in range(1, args.stages))}\n")
            f.write("m0.out: src.jsonl\n\tcp src.jsonl m0.out\n")
            for i in range(1, args.stages):
                up = f"m{i - width}.out" if i > width else "m0.out"
                f.write(f"m{i}.out: {up}\n\twc -c < {up} > m{i}.out\n")
        subprocess.run(["make", "-s", "-j2"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        noop = timed([RTO, "run", "study.toml"], tmp, args.repeat)
        make = timed(["make", "-q"], tmp, args.repeat)
        row(f"no-op run, {args.stages} stages", noop, "make -q (same DAG)", make)
        plan = timed([RTO, "plan", "study.toml"], tmp, args.repeat)
        row(f"plan, {args.stages} stages", plan, "make -q (same DAG)", make)

        # 2. Hashing a large input.
        big_dir = os.path.join(tmp, "big")
        os.mkdir(big_dir)
        big = os.path.join(big_dir, "weights.bin")
        with open(big, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(args.mib):
                f.write(chunk)
        old = time.time() - 60
        os.utime(big, (old, old))  # settled, so the stat index may remember it
        with open(os.path.join(big_dir, "study.toml"), "w") as f:
            f.write('[[stage]]\nid = "h"\nuses = "command"\ninputs = { w = "weights.bin" }\n'
                    'params = { cmd = "true" }\n')
        cold = []
        for _ in range(args.repeat):
            shutil.rmtree(os.path.join(big_dir, ".rto"), ignore_errors=True)
            cold.append(timed([RTO, "run", "study.toml"], big_dir, 1))
        cold = statistics.median(cold)
        ref = timed(["sha256sum", big], big_dir, args.repeat)
        row(f"cold run, {args.mib} MiB input", cold, "sha256sum", ref)
        warm = timed([RTO, "run", "study.toml"], big_dir, args.repeat)
        row(f"warm run, {args.mib} MiB input", warm, "sha256sum", ref)
        print(f"\nhash throughput (cold run): {args.mib / cold:.0f} MiB/s; sha256sum: {args.mib / ref:.0f} MiB/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
