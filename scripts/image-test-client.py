#!/usr/bin/env python3
"""The HTTP client scripts/test-image.sh drives a deployed i2v-server with (Python's standard library only, so it
runs with any python3 on the host).

    image-test-client.py ready    BASE [--timeout S]                 # until /ready answers 200
    image-test-client.py submit   BASE KEY [--frames N] [--steps N] [--webhook URL]   # prints the video id
    image-test-client.py wait     BASE KEY ID --until queued|in_progress|completed [--timeout S]
    image-test-client.py download BASE KEY ID OUT.mp4
    image-test-client.py reject   BASE KEY                           # a non-image upload must answer 400
    image-test-client.py metrics  BASE [BASE...]                     # metric names exported, one a line

Jobs go through the OpenAI-compatible API (`POST /v1/videos`, multipart with the image as `input_reference`),
so no image host is needed: the image is a PNG made here.
"""

import argparse
import json
import struct
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib


def say(message: str) -> None:
    print(f"image-test-client: {message}", file=sys.stderr, flush=True)


def request(method: str, url: str, key: str | None = None, body: bytes | None = None, content_type: str | None = None,
            timeout: float = 30) -> tuple[int, bytes]:
    headers = {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def png(width: int = 320, height: int = 192) -> bytes:
    """A gradient with a square in it: enough structure to be a real picture for the intake."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        for x in range(width):
            inside = width // 3 < x < 2 * width // 3 and height // 3 < y < 2 * height // 3
            rows += bytes((255, 200, 0) if inside else (x * 255 // width, y * 255 // height, 128))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(rows))) + chunk(b"IEND", b"")


def multipart(fields: dict[str, str], file_field: str, filename: str, file_type: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        f"Content-Type: {file_type}\r\n\r\n".encode() + data + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def cmd_ready(args) -> int:
    deadline = time.monotonic() + args.timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            status, body = request("GET", f"{args.base}/ready", timeout=5)
            if status == 200:
                say(f"{args.base}/ready: {body.decode()[:300]}")
                return 0
            last = f"{status} {body.decode()[:200]}"
        except OSError as error:
            last = str(error)
        time.sleep(2)
    say(f"{args.base}/ready not 200 after {args.timeout} s: {last}")
    return 1


def cmd_submit(args) -> int:
    fields = {
        "prompt": "A test pattern drifting slowly to the left",
        "num_frames": str(args.frames),
        "num_inference_steps": str(args.steps),
        "seed": "42",
    }
    if args.webhook:
        fields["webhook_url"] = args.webhook
    body, content_type = multipart(fields, "input_reference", "pattern.png", "image/png", png())
    status, answer = request("POST", f"{args.base}/v1/videos", args.key, body, content_type)
    if status != 200:
        say(f"submit answered {status}: {answer.decode()[:500]}")
        return 1
    video = json.loads(answer)
    say(f"submitted {video['id']} ({video.get('status')})")
    print(video["id"])
    return 0


def cmd_wait(args) -> int:
    deadline = time.monotonic() + args.timeout
    order = ["queued", "in_progress", "completed"]
    video: dict = {}
    exact = args.until == "queued"  # back in the queue (taken back from a lost node): that status, not a later one
    while time.monotonic() < deadline:
        status, answer = request("GET", f"{args.base}/v1/videos/{args.id}", args.key)
        if status == 200:
            video = json.loads(answer)
            if video["status"] == "failed":
                say(f"{args.id} failed: {json.dumps(video.get('error'))}")
                return 1
            if exact and video["status"] == "queued":
                say(f"{args.id}: queued")
                print(json.dumps(video))
                return 0
            if not exact and video["status"] in order and order.index(video["status"]) >= order.index(args.until):
                if args.until != "in_progress" or video.get("progress", 0) > 0:
                    say(f"{args.id}: {video['status']}, progress {video.get('progress')}")
                    print(json.dumps(video))
                    return 0
        elif status not in (502, 503):
            say(f"status of {args.id} answered {status}: {answer.decode()[:300]}")
        time.sleep(0.5)
    say(f"{args.id} not {args.until} after {args.timeout} s (last: {json.dumps(video)[:300]})")
    return 1


def cmd_download(args) -> int:
    status, answer = request("GET", f"{args.base}/v1/videos/{args.id}/content", args.key, timeout=60)
    if status != 200:
        say(f"download answered {status}: {answer[:300]!r}")
        return 1
    with open(args.out, "wb") as out:
        out.write(answer)
    say(f"downloaded {len(answer)} bytes to {args.out}")
    return 0


def cmd_reject(args) -> int:
    body, content_type = multipart(
        {"prompt": "This upload is not a picture at all"}, "input_reference", "broken.png", "image/png", b"not a picture" * 10
    )
    status, answer = request("POST", f"{args.base}/v1/videos", args.key, body, content_type)
    if status != 400:
        say(f"a non-image upload answered {status}, not 400: {answer.decode()[:300]}")
        return 1
    say(f"a non-image upload answered 400: {answer.decode()[:200]}")
    return 0


def cmd_metrics(args) -> int:
    names = set()
    for base in args.bases:
        status, answer = request("GET", f"{base}/metrics")
        if status != 200:
            say(f"{base}/metrics answered {status}")
            return 1
        for line in answer.decode().splitlines():
            if line and not line.startswith("#"):
                names.add(line.split("{", 1)[0].split(" ", 1)[0])
    print("\n".join(sorted(names)))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ready")
    p.add_argument("base")
    p.add_argument("--timeout", type=float, default=300)
    p.set_defaults(run=cmd_ready)
    p = sub.add_parser("submit")
    p.add_argument("base")
    p.add_argument("key")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--webhook")
    p.set_defaults(run=cmd_submit)
    p = sub.add_parser("wait")
    p.add_argument("base")
    p.add_argument("key")
    p.add_argument("id")
    p.add_argument("--until", choices=["queued", "in_progress", "completed"], default="completed")
    p.add_argument("--timeout", type=float, default=300)
    p.set_defaults(run=cmd_wait)
    p = sub.add_parser("download")
    p.add_argument("base")
    p.add_argument("key")
    p.add_argument("id")
    p.add_argument("out")
    p.set_defaults(run=cmd_download)
    p = sub.add_parser("reject")
    p.add_argument("base")
    p.add_argument("key")
    p.set_defaults(run=cmd_reject)
    p = sub.add_parser("metrics")
    p.add_argument("bases", nargs="+")
    p.set_defaults(run=cmd_metrics)
    args = parser.parse_args()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
