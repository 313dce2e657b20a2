"""Writes the seed corpora of the fuzz targets, tests/fuzz/corpus/<target>/, from the
project's fixtures (plus a few small hand-made inputs for paths no fixture reaches).

    python3 tests/fuzz/make_corpus.py

Standard library only; deterministic. Seeds are small (the largest is ~9 KiB) so that
libFuzzer's default -max_len, the largest seed, stays small. Re-running replaces the
corpus directories with exactly these seeds (what a long fuzzing run adds is not kept).
"""

import re
import shutil
import struct
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fuzz" / "corpus"
FIX = ROOT / "tests" / "fixtures"


def target(name: str) -> Path:
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def put(d: Path, name: str, data: bytes) -> None:
    (d / name).write_bytes(data)


# --- protobuf, for the ONNX seeds ---------------------------------------------------


def varint(data: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        b = data[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def fields(data: bytes):
    i = 0
    while i < len(data):
        start = i
        key, i = varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = varint(data, i)
            yield number, wire, data[start:i], None
        elif wire == 1:
            i += 8
            yield number, wire, data[start:i], None
        elif wire == 2:
            n, j = varint(data, i)
            i = j + n
            yield number, wire, data[start:i], data[j:i]
        elif wire == 5:
            i += 4
            yield number, wire, data[start:i], None
        else:
            raise ValueError(f"wire type {wire}")


def enc_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def enc_bytes(number: int, payload: bytes) -> bytes:
    return enc_varint(number << 3 | 2) + enc_varint(len(payload)) + payload


def keep_only(message: bytes, keep: set[int]) -> bytes:
    return b"".join(raw for number, _, raw, _ in fields(message) if number in keep)


def skeleton(model: bytes) -> bytes:
    """The model with the graph's nodes dropped and each initializer reduced to its name,
    dims and type: every field the reader looks at, without the weights."""
    out = bytearray()
    for number, _, raw, payload in fields(model):
        if number != 7:
            out += raw
            continue
        graph = bytearray()
        for gnum, _, graw, gpayload in fields(payload):
            if gnum == 1:  # NodeProto: the reader never looks inside
                continue
            if gnum == 5:  # TensorProto: dims (1), data_type (2), name (8)
                graph += enc_bytes(5, keep_only(gpayload, {1, 2, 8}))
            else:
                graph += graw
        out += enc_bytes(7, bytes(graph))
    return bytes(out)


# --- images ---------------------------------------------------------------------------


def png(width: int, height: int, color_type: int, depth: int, rows: list[bytes], plte: bytes = b"") -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + r for r in rows)
    body = chunk(b"IHDR", ihdr)
    if plte:
        body += chunk(b"PLTE", plte)
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def bmp(width: int, height: int, bpp: int, pixels: bytes) -> bytes:
    row = (width * bpp // 8 + 3) & ~3
    data = b"".join(
        pixels[y * width * bpp // 8 : (y + 1) * width * bpp // 8].ljust(row, b"\x00") for y in range(height)
    )
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bpp, 0, len(data), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(header) + len(data), 0, 0, 14 + len(header)) + header + data


def gradient(w: int, h: int, channels: int, wide: bool = False) -> list[bytes]:
    rows = []
    for y in range(h):
        row = bytearray()
        for x in range(w):
            for c in range(channels):
                v = (x * 37 + y * 11 + c * 71) % 256
                row += struct.pack(">H", v * 257) if wide else bytes([v])
        rows.append(bytes(row))
    return rows


def images() -> dict[str, bytes]:
    seeds = {}
    for p in sorted((FIX / "images").iterdir()):
        if p.suffix in (".png", ".jpg", ".bmp"):
            seeds[p.name] = p.read_bytes()
    for p in sorted((ROOT / "models" / "samples").glob("*.png"))[:4]:
        seeds["sample-" + p.name] = p.read_bytes()
    seeds["mjpeg_64x48.jpg"] = (FIX / "camera" / "mjpeg_64x48.jpg").read_bytes()
    seeds["rgb16_9x7.png"] = png(9, 7, 2, 16, gradient(9, 7, 3, wide=True))
    seeds["gray_alpha_5x4.png"] = png(5, 4, 4, 8, gradient(5, 4, 2))
    seeds["rgba16_3x3.png"] = png(3, 3, 6, 16, gradient(3, 3, 4, wide=True))
    seeds["palette_4x2.png"] = png(4, 2, 3, 8, [bytes([0, 1, 2, 0]), bytes([2, 1, 0, 1])], bytes(range(9)))
    seeds["gray1bit_8x2.png"] = png(8, 2, 0, 1, [b"\xa5", b"\x5a"])
    seeds["bgr24_6x3.bmp"] = bmp(6, 3, 24, b"".join(gradient(6, 3, 3)))
    seeds["bgra32_2x2.bmp"] = bmp(2, 2, 32, b"".join(gradient(2, 2, 4)))
    return seeds


def main() -> None:
    # card_json: every card fixture, and the unit tests' card.
    d = target("card_json")
    for p in sorted((FIX / "cards").glob("*/*.json")):
        put(d, f"{p.parent.name}-{p.name}", p.read_bytes())
    card_rs = (ROOT / "src" / "card.rs").read_text()
    put(d, "card_rs-VALID.json", re.search(r'VALID: &str = r#"(.*?)"#;', card_rs, re.S).group(1).encode())

    # onnx_meta: the small fixture models as they are, the others as skeletons.
    d = target("onnx_meta")
    models = sorted((FIX / "models").glob("*.onnx")) + [ROOT / "models" / "default" / "student.onnx"]
    for p in models:
        data = p.read_bytes()
        name = p.name if p.parent.name == "models" else "default-student.onnx"
        if len(data) > 8192:
            data = skeleton(data)
            name = name.replace(".onnx", ".skeleton.onnx")
        put(d, name, data)
    put(d, "truncated-gray28.onnx", (FIX / "models" / "gray28.onnx").read_bytes()[:2048])

    # A card-less graph with dimensions near the bounds (the reader's and the card's).
    def value_info(name: str, dims: list[int]) -> bytes:
        shape = b"".join(enc_bytes(1, enc_varint(1 << 3) + enc_varint(n)) for n in dims)
        tensor = enc_varint(1 << 3) + enc_varint(1) + enc_bytes(2, shape)
        return enc_bytes(1, name.encode()) + enc_bytes(2, enc_bytes(1, tensor))

    graph = enc_bytes(11, value_info("image", [1, 3, 8192, 8193])) + enc_bytes(12, value_info("logits", [1, 100001]))
    put(d, "cardless-big-dims.onnx", enc_varint(1 << 3) + enc_varint(8) + enc_bytes(7, graph))

    # npy: the small .npy fixtures and reference tensors, plus header variants.
    d = target("npy")
    npys = [*sorted((FIX / "models").glob("*.npy")), *sorted((ROOT / "models/default/reference").glob("*_0.npy"))]
    for p in npys:
        if p.stat().st_size <= 8192:
            put(d, f"{p.parent.name}-{p.name}", p.read_bytes())

    def npy(header: str, data: bytes, version: int = 1) -> bytes:
        head = header.encode()
        pad = 64 - (10 + len(head) + 1) % 64
        head += b" " * pad + b"\n"
        size = struct.pack("<H", len(head)) if version == 1 else struct.pack("<I", len(head))
        return b"\x93NUMPY" + bytes([version, 0]) + size + head + data

    floats = struct.pack("<4f", 1.0, -2.5, 3.0, 0.0)
    put(d, "v2.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", floats, 2))
    put(d, "v3-scalar.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", floats[:4], 3))
    put(d, "fortran.npy", npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", floats))
    put(d, "be.npy", npy("{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }", floats))

    # image_decode: the image fixtures, some samples, and depths/colour types they lack.
    d = target("image_decode")
    for name, data in images().items():
        put(d, name, data)

    # camera_convert: [format, width u16 LE, height u16 LE] + the frame.
    d = target("camera_convert")
    cam = FIX / "camera"
    head = lambda fmt, w, h: bytes([fmt]) + struct.pack("<HH", w, h)  # noqa: E731
    put(d, "yuyv_64x48", head(0, 64, 48) + (cam / "yuyv_64x48.yuyv").read_bytes())
    put(d, "mjpeg_64x48", head(1, 64, 48) + (cam / "mjpeg_64x48.jpg").read_bytes())
    put(d, "mjpeg_64x48_nodht", head(1, 64, 48) + (cam / "mjpeg_64x48_nodht.jpg").read_bytes())
    put(d, "mjpeg_wrong_size", head(1, 640, 480) + (cam / "mjpeg_64x48_nodht.jpg").read_bytes())
    put(d, "rgb24_64x48", head(2, 64, 48) + (cam / "rgb24_64x48.rgb").read_bytes())
    put(d, "yuyv_2x1", head(0, 2, 1) + bytes([255, 255, 0, 0]))
    put(d, "yuyv_odd", head(0, 3, 1) + bytes(8))
    put(d, "rgb24_short", head(2, 4, 4) + bytes(40))

    # serve_toml: the documented example and the test suite's configs.
    d = target("serve_toml")
    put(d, "deploy-edge-kd.toml", (ROOT / "deploy" / "edge-kd.toml").read_bytes())
    configs = {
        "folder-review.toml": """
[box]
id = "test-box"
state_dir = "/tmp/state"
[http]
listen = "127.0.0.1:8080"
[[source]]
name = "inbox"
threshold = 0.999999
folder = { path = "/tmp/in", after = "move", move_to = "/tmp/done" }
[sinks.jsonl]
path = "/tmp/r.jsonl"
fsync = "always"
[sinks.review]
dir = "/tmp/review"
max_files = 2
""",
        "upload-token.toml": f"""
[box]
id = "box1"
state_dir = "/tmp/state"
[http]
listen = "127.0.0.1:8080"
token_file = "/tmp/token"
max_body_bytes = 4096
[[source]]
name = "line1"
http = {{}}
[[source]]
name = "line2"
http = {{}}
model = "/tmp/m.onnx"
model_sha256 = "{"ab" * 32}"
[source.limits]
max_width = 4096
max_pixels = 1000000
""",
        "synthetic.toml": """
[box]
state_dir = "/tmp/state"
[http]
listen = "127.0.0.1:8080"
[[source]]
name = "pattern"
queue = 64
synthetic = { image = "/tmp/p.png", fps = 0 }
drop = "block"
[sinks.jsonl]
path = "/tmp/r.jsonl"
fsync = "never"
""",
        "mqtt.toml": """
[box]
id = "box7"
state_dir = "/tmp/state"
shutdown_drain_ms = 3000
[http]
listen = "127.0.0.1:8080"
[[source]]
name = "line1"
http = {}
queue = 64
[sinks.jsonl]
path = "/tmp/results.jsonl"
[sinks.mqtt]
host = "127.0.0.1"
port = 1883
keepalive_s = 5
username = "u"
password_file = "/tmp/pw"
fsync = "interval"
fsync_interval_ms = 250
window = 8
""",
        "camera.toml": """
[[source]]
name = "cam0"
engine = "ort"
threads = 2
workers = 2
top_k = 5
drop = "drop-newest"
camera = { device = "/dev/video0", format = "yuyv", width = 1280, height = 720, fps = 30, interval_ms = 100 }
""",
        "bad-unknown-key.toml": '[[source]]\nname = "a"\nhttp = {}\nengin = "tract"\n',
        "bad-engine.toml": '[[source]]\nname = "a"\nhttp = {}\nengine = "tensorrt"\n',
        "bad-no-feed.toml": '[[source]]\nname = "a"\n',
        "bad-move.toml": '[[source]]\nname = "a"\nfolder = { path = "/x", after = "move" }\n',
        "bad-listen.toml": '[http]\nlisten = "localhost"\n[[source]]\nname = "a"\nhttp = {}\n',
    }
    for name, text in configs.items():
        put(d, name, text.lstrip("\n").encode())

    # infer_body: sources line, request target line, [content-type line,] body.
    d = target("infer_body")
    sample = (ROOT / "models" / "samples" / "0002-trouser.png").read_bytes()
    put(d, "one-upload.req", b"+line1\n/infer\n" + sample)
    jpeg, bmp_ = (FIX / "images/photo_64x48.jpg").read_bytes(), (FIX / "images/tiny_33x17.bmp").read_bytes()
    put(d, "named.req", b"cam0,inbox,+uploads\n/infer?source=uploads\n" + jpeg)
    put(d, "two-uploads.req", b"+a,+b\n/infer\n" + sample)
    put(d, "encoded-name.req", b"+line%201,+b\n/infer?source=line%201&x=1\n" + bmp_)
    put(d, "no-upload-source.req", b"cam0\n/infer?source=cam0\n" + sample)
    put(d, "empty-body.req", b"+line1\n/infer\n")
    put(d, "bad-query.req", b"+line1\n/infer?source=a&source=b\n" + b"x")
    put(d, "not-an-image.req", b"+line1\n/infer\nnot an image at all")
    head = b'--b0\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
    form = head + sample + b"\r\n--b0--\r\n"
    put(d, "multipart.req", b"+cell\n/infer\ncontent-type: multipart/form-data; boundary=b0\n" + form)
    unknown = (
        b'--a;b\r\nContent-Disposition: form-data; name="depth"\r\n\r\nxx\r\n'
        b"--a;b\r\nContent-Disposition: form-data; name=image\r\n\r\nyy\r\n--a;b--"
    )
    quoted = b'+cell\n/infer\ncontent-type: multipart/form-data; boundary="a;b"\n'
    put(d, "multipart-unknown-part.req", quoted + unknown)

    # spool_read: [acked length | 255 = no acked file] + acked + the segment.
    d = target("spool_read")
    lines = b"".join(b'edge-kd/box7/line1/result\t{"seq":%d,"label":"Trouser"}\n' % i for i in range(5))
    put(d, "no-acked", b"\xff" + lines)
    put(d, "acked-2", b"\x01" + b"2" + lines)
    put(d, "acked-all", b"\x01" + b"5" + lines)
    put(d, "acked-past-end", b"\x02" + b"99" + lines)
    put(d, "torn-tail", b"\x01" + b"1" + lines + b'edge-kd/box7/line1/result\t{"se')
    put(d, "acked-empty", b"\x00" + lines)
    put(d, "acked-garbage", b"\x03" + b"x1\n" + lines)
    put(d, "damaged-line", b"\xff" + lines[:60] + b"no tab here\n" + lines[60:])
    put(d, "zero-filled", b"\xff" + lines + bytes(64))
    put(d, "empty", b"\xff")


if __name__ == "__main__":
    main()
