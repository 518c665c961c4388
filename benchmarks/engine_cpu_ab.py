"""CPU per token of the batching engine in-process (its thread alone) and of offline ``LM.complete``, A/B.

The bench_serve request mix (32 x REQUESTS chat prompts, 64 tokens, temperature 0.8, per-request seeds), all
submitted at once to ``LM.batch_engine()``; the engine thread's CPU seconds (from /proc) per generated token,
then offline ``LM.complete`` at batch 32 (this thread's CPU). Three repetitions per process, one process per
tree and pair, trees alternating.

    python benchmarks/engine_cpu_ab.py RUN PAIRS REQUESTS main=/work/main/src branch=$PWD/src
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if len(sys.argv) > 1 and sys.argv[1] == "--child":
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_serve as bs
    import torch

    from lmforge.api import load

    torch.set_num_threads(1)
    run = Path(sys.argv[2])
    args = argparse.Namespace(threads=1, clients=32, requests=int(sys.argv[3]), max_tokens=64)
    lm = load(run, device="cpu")
    engine = lm.batch_engine(max_batch=32, max_queue=10**6)

    def engine_cpu() -> float:
        with open(f"/proc/self/task/{engine._thread.native_id}/stat") as f:
            p = f.read().rsplit(")", 1)[1].split()
        return (int(p[11]) + int(p[12])) / os.sysconf("SC_CLK_TCK")

    out = {"engine": [], "offline": []}
    for rep in range(3):
        tokens, cpu = bs.engine_load(lm, engine, args, clock=engine_cpu)
        out["engine"].append(1e6 * cpu / tokens)
        r = bs.offline(run, args, clock=time.thread_time)
        out["offline"].append(1e6 * r["wall"] / r["tokens"])
    engine.stop()
    print(json.dumps(out))
    sys.exit(0)
run, pairs, reqs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
trees = [a.split("=", 1) for a in sys.argv[4:]]
print("load", os.getloadavg())
res = {n: {"engine": [], "offline": []} for n, _ in trees}
for p in range(pairs):
    for name, src in (trees if p % 2 == 0 else trees[::-1]):
        o = subprocess.run([sys.executable, __file__, "--child", run, reqs], env={**os.environ, "PYTHONPATH": src},
                           capture_output=True, text=True)
        if o.returncode:
            print(o.stderr[-2000:]); sys.exit(1)
        d = json.loads(o.stdout.strip().splitlines()[-1])
        for m, v in d.items():
            res[name][m] += v
        rounded = {m: [round(x, 1) for x in v] for m, v in d.items()}
        print(f"{name:8s}", rounded, f"load {os.getloadavg()[0]:.2f}", flush=True)
import statistics as st
for name in res:
    print(f"{name:8s}", "  ".join(f"{m} median {st.median(v):.1f} us/token" for m, v in res[name].items()))
if len(trees) == 2:
    (a, ra), (b, rb) = res.items()
    for m in ("engine", "offline"):
        print(f"{m}: {b}/{a} CPU per token = {st.median(rb[m]) / st.median(ra[m]):.2f}")
print("load", os.getloadavg())
