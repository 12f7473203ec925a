#!/usr/bin/env python3
"""Process model for device servers: 12 devices (the seeds' cluster) served by 12 processes,
by 2 (one per node) or by 1. Prints median startup (spawn until every control socket answers
`get`) and summed idle RSS/PSS over 5 runs. Usage: scripts/measure-device-processes.py [DEVICE_BIN]
(default target/debug/device; build it with `cargo build -p device`). See docs/launcher.md."""
import os, socket, subprocess, time, sys, statistics
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../target/debug/device")
D = "/tmp/ma-measure"
os.makedirs(D, exist_ok=True)
labels = [f"NODE{n}-NUMA{m}-{k}" for n in (1,2) for m in (0,1) for k in ("PF","VF0","VF1")]
socks = [f"{D}/d{i}.sock" for i in range(12)]
def vf(l): return None if l.endswith("PF") else int(l[-1])
def ready(s):
    try:
        c = socket.socket(socket.AF_UNIX); c.connect(s + ".ctl"); c.sendall(b"get\n"); r = c.recv(4096); c.close(); return b"identity" in r
    except OSError: return False
def write_list(path, idx):
    with open(path, "w") as f:
        for i in idx:
            f.write(f'[[device]]\nuuid = "{labels[i]}"\nsocket = "{socks[i]}"\n' + (f"vf_index = {vf(labels[i])}\n" if vf(labels[i]) is not None else "") + "\n")
def run(model):
    procs = []
    t0 = time.monotonic()
    if model == "per-device":
        for i in range(12):
            a = [BIN, "-u", labels[i], socks[i]] + (["--vf", str(vf(labels[i]))] if vf(labels[i]) is not None else [])
            procs.append(subprocess.Popen(a, stderr=subprocess.DEVNULL))
    elif model == "per-node":
        for n in range(2):
            p = f"{D}/n{n}.toml"; write_list(p, range(6*n, 6*n+6))
            procs.append(subprocess.Popen([BIN, "--topology", p], stderr=subprocess.DEVNULL))
    else:
        p = f"{D}/all.toml"; write_list(p, range(12))
        procs.append(subprocess.Popen([BIN, "--topology", p], stderr=subprocess.DEVNULL))
    while not all(ready(s) for s in socks): time.sleep(0.002)
    dt = time.monotonic() - t0
    time.sleep(0.3)
    rss = sum(int([l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1]) for p in procs)
    pss = 0
    for p in procs:
        for l in open(f"/proc/{p.pid}/smaps_rollup"):
            if l.startswith("Pss:"): pss += int(l.split()[1])
    for p in procs: p.terminate()
    for p in procs: p.wait()
    return dt, rss, pss, len(procs)
for model in ("per-device", "per-node", "total"):
    r = [run(model) for _ in range(5)]
    print(f"{model:10} procs={r[0][3]:2} startup median {statistics.median(x[0] for x in r)*1000:6.1f} ms  RSS {statistics.median(x[1] for x in r)/1024:5.1f} MiB  PSS {statistics.median(x[2] for x in r)/1024:5.1f} MiB")
