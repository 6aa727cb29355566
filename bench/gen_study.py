#!/usr/bin/env python3
"""Writes a generated study of N stages (default 500) for the no-op benchmark.

A dataset stage feeds N-1 command stages arranged as a chain of fan-outs: each command stage reads the dataset's
train file and the output of the stage `width` places before it, so the DAG is both wide and deep.
"""
import json, os, sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
out = sys.argv[2] if len(sys.argv) > 2 else "study.toml"
width = 10
d = os.path.dirname(os.path.abspath(out))
with open(os.path.join(d, "src.jsonl"), "w") as f:
    for i in range(50):
        f.write(json.dumps({"instruction": f"Add {i} and {i}.", "input": "", "output": str(2 * i)}) + "\n")
lines = ['[study]\nname = "bench"\n',
         '[[stage]]\nid = "data"\nuses = "dataset"\ninputs = { src = "src.jsonl" }\n'
         'params = { mode = "rt", sources = [{ input = "src", preset = "alpaca" }] }\n']
for i in range(1, n):
    up = f"s{i - width}.out.txt" if i > width else "data.train.jsonl"
    lines.append(f'[[stage]]\nid = "s{i}"\nuses = "command"\ninputs = {{ up = "{up}" }}\n'
                 f'params = {{ cmd = "wc -c < \\"$RTO_INPUT_UP\\" > out.txt; echo {i} >> out.txt", outputs = ["out.txt"] }}\n')
with open(out, "w") as f:
    f.write("\n".join(lines))
