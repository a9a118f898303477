"""The 17 matrix products of one train step of the demo AE (784-256-64-20, batch 128), each timed alone at its
shape and layout on 1 thread with the process CPU clock, and their sum per step (see MFU_NOTES.md).

    python benchmarks/ae_gemm_shapes.py
"""

import time

import torch

torch.set_num_threads(1)


def rate(m, k, n, tA=False, tB=False, reps=400):
    a = torch.randn(k, m).t() if tA else torch.randn(m, k)
    b = torch.randn(n, k).t() if tB else torch.randn(k, n)
    o = torch.empty(m, n)
    for _ in range(10):
        torch.mm(a, b, out=o)
    t = time.process_time()
    for _ in range(reps):
        torch.mm(a, b, out=o)
    dt = (time.process_time() - t) / reps
    return dt, 2 * m * k * n / dt / 1e9


tot = 0
fl = 0
B = 128
layers = [(784, 256), (256, 64), (64, 20), (20, 64), (64, 256), (256, 784)]
for i, (a, b) in enumerate(layers):
    for name, (m, k, n, tA, tB) in {
        "fwd": (B, a, b, False, True),
        "dgrad": (B, b, a, False, False),
        "wgrad": (b, B, a, True, False),
    }.items():
        if i == 0 and name == "dgrad":
            continue
        dt, g = rate(m, k, n, tA, tB)
        tot += dt
        fl += 2 * m * k * n
        print(f"{a}->{b} {name}: {dt * 1e6:.1f}us {g:.1f} GF/s")
dt, g = rate(1024, 1024, 1024, reps=20)
print("1024^3", g, "GF/s")
print(
    f"sum gemm per step {tot * 1e3:.3f} ms -> {B / tot:.0f} samples/s, MFU(6xMAC) ceiling {B / tot * 6 * 436736 / (g * 1e9):.3f}"
)
