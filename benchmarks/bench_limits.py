"""Memory and stalls under hostile bodies: peak RSS of a real ``flowserve serve`` process and
``/healthz`` latency while each body is being answered, against the same process idle.

    python benchmarks/bench_limits.py [--body-mib 64] [--repeats 3]

Cases: a body of empty rows filling ``--body-mib`` (the input that once took 2.2 GB), the
largest accepted JSON body (MAX_ROWS rows of the default model's 4 features), and JSON nested
5,000 levels deep. For each: answer status, growth of the process's peak RSS (VmHWM, Linux) as a
multiple of the body size, and the median ``/healthz`` latency measured while the body is sent
and answered, as a ratio to idle medians taken interleaved in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowserve.service.settings import DEFAULT_MODEL_ROOT
from tests.live_server import live_server_process


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def healthz_ms(client: httpx.Client, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        client.get("/healthz")
        out.append(1000 * (time.perf_counter() - start))
    return out


def bodies(mib: int) -> dict[str, bytes]:
    size = mib * 1024 * 1024
    empty = b'{"inputs": [' + b"[]," * ((size - 20) // 3) + b"[]]}"
    rows = b'{"inputs": [' + b"[2184.4,51.9,2.14,4.13]," * 99_999 + b"[2184.4,51.9,2.14,4.13]]}"
    deep = b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    return {"empty rows": empty, "100k valid rows": rows, "nested 5000 deep": deep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--body-mib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {"FLOWSERVE_MAX_BODY_BYTES": str(args.body_mib * 1024 * 1024)}
    cases = bodies(args.body_mib)
    results: dict[str, list[tuple[int, float, float, float, float]]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, body in cases.items():  # a fresh process per case: VmHWM only grows
            with (
                live_server_process(DEFAULT_MODEL_ROOT, env=env) as (url, proc),
                httpx.Client(base_url=url, timeout=120) as probe,
                httpx.Client(base_url=url, timeout=120) as sender,
            ):
                idle = statistics.median(healthz_ms(probe, 20))
                before = vm_hwm_kib(proc.pid)
                answer: dict[str, int] = {}

                def send(body: bytes = body, answer: dict[str, int] = answer) -> None:
                    r = sender.post(
                        "/log_prob", content=body, headers={"content-type": "application/json"}
                    )
                    answer["status"] = r.status_code

                t = threading.Thread(target=send)
                t.start()
                during: list[float] = []
                while t.is_alive():
                    during += healthz_ms(probe, 1)
                t.join()
                grew_mib = (vm_hwm_kib(proc.pid) - before) / 1024
                busy = statistics.median(during) if during else float("nan")
                results[name].append(
                    (answer["status"], grew_mib / (len(body) / 2**20), idle, busy, grew_mib)
                )
    print(f"{'case':<18} {'body MiB':>9} {'status':>6} {'peak RSS growth MiB':>20} {'/ body':>7} "
          f"{'healthz idle ms':>16} {'during ms':>10} {'ratio':>6}")  # fmt: skip
    for name, rows in results.items():
        size = len(cases[name]) / 2**20
        ratio = statistics.median(r[1] for r in rows)
        grew = statistics.median(r[4] for r in rows)
        idle = statistics.median(r[2] for r in rows)
        busy = statistics.median(r[3] for r in rows)
        print(
            f"{name:<18} {size:>9.1f} {rows[0][0]:>6} {grew:>20.1f} {ratio:>6.2f}x {idle:>16.2f} "
            f"{busy:>10.2f} {busy / idle:>5.1f}x"
        )


if __name__ == "__main__":
    main()
