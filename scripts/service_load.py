"""Concurrent clients against a running rerank service (``python -m lychee_rerank serve``): prints
requests/s, images/s and latency percentiles for each number of clients, with the load average.

    python scripts/service_load.py --url http://127.0.0.1:8000 --clients 1,8,32 --documents 20 --size 1024x768

Each client posts ``--requests`` requests in vLLM's shape, each with ``--documents`` synthetic JPEGs
as data: URIs (a different query per client), one after the other. Needs only httpx2, numpy, Pillow.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import threading
import time

import httpx2
import numpy as np
from PIL import Image


def jpeg_uri(width: int, height: int, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def run(url: str, clients: int, requests: int, documents: list, headers: dict) -> dict:
    latencies: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        with httpx2.Client(timeout=600, headers=headers) as http:
            for _ in range(requests):
                body = {"query": f"photo number {number}", "documents": documents, "return_documents": False}
                start = time.perf_counter()
                status = http.post(url + "/v1/rerank", json=body).status_code
                with lock:
                    (latencies if status == 200 else failures).append(time.perf_counter() - start if status == 200 else status)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies) or [float("nan")]
    return {
        "clients": clients, "ok": len(latencies), "failed": len(failures), "seconds": elapsed,
        "requests_per_s": len(latencies) / elapsed, "images_per_s": len(latencies) * len(documents) / elapsed,
        "p50_s": statistics.median(ordered), "p95_s": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", default="1,8", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--documents", type=int, default=8, help="images per request")
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the synthetic JPEGs")
    parser.add_argument("--api-key", default=os.environ.get("LYCHEE_API_KEY"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    documents = [jpeg_uri(width, height, seed) for seed in range(args.documents)]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    print("clients  ok  failed  seconds  requests/s  images/s  p50 s  p95 s  load average")
    for clients in (int(c) for c in args.clients.split(",")):
        r = run(args.url, clients, args.requests, documents, headers)
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
        print(f"{r['clients']:7d} {r['ok']:3d} {r['failed']:7d} {r['seconds']:8.1f} {r['requests_per_s']:11.2f} "
              f"{r['images_per_s']:9.1f} {r['p50_s']:6.2f} {r['p95_s']:6.2f}  {load}")


if __name__ == "__main__":
    main()
