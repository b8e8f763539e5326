#!/usr/bin/python3
"""A client nobody here wrote, against a real slimd: issue 18's hostile inputs and abuse cases.

   hostile_client_test.py SLIMD SLIM_TRAIN SOURCE_DIR

Python with Debian's grpcio and protobuf, messages generated here by protoc from
proto/slim/v1/slim.proto, methods called by name (no slim code on this side). Each case
asserts the status code, that the message names what is wrong and leaks no stack trace or
server path, and at the end that slimd is healthy, left no partial files behind and stayed
within its documented memory bound (docs/service.md, "Hostile clients").
"""
import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

import grpc

SLIMD, TRAIN, SRC = sys.argv[1], sys.argv[2], os.path.abspath(sys.argv[3])
TMP = tempfile.mkdtemp(prefix="hostile-")
DATA = os.path.join(TMP, "data")
# slimd's own peak resident memory (VmHWM) through every case below, the oversized plans
# included; it starts near 25 MiB (bench/results/2026-12-06-oversized-plan).
SLIMD_PEAK_BOUND_MIB = 128

subprocess.run(["protoc", f"--python_out={TMP}", "-I", os.path.join(SRC, "proto"),
                os.path.join(SRC, "proto/slim/v1/slim.proto")], check=True)
sys.path.insert(0, TMP)
from slim.v1 import slim_pb2 as pb  # noqa: E402

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
        print("FAIL:", message, flush=True)


# ---- slimd with two tenants and an admin ----------------------------------------------------
tokens = {"alice": "tok-alice", "bob": "tok-bob", "ops": "tok-ops"}
with open(os.path.join(TMP, "tokens.yaml"), "w") as f:
    f.write("tokens:\n")
    for tenant, token in tokens.items():
        role = "admin" if tenant == "ops" else "user"
        f.write(f"  - {{sha256: {hashlib.sha256(token.encode()).hexdigest()}, tenant: {tenant}, role: {role}}}\n")
sock = os.path.join(TMP, "slimd.sock")
log = open(os.path.join(TMP, "slimd.log"), "w")
slimd = subprocess.Popen([SLIMD, "--listen", f"unix:{sock}", "--data-dir", DATA, "--devices", "cpu:2GiB",
                          "--worker-binary", TRAIN, "--tokens-file", os.path.join(TMP, "tokens.yaml"),
                          "--metrics-address", "off", "--executor-threads", "2"], stdout=log, stderr=subprocess.STDOUT)
channel = grpc.insecure_channel(f"unix:{sock}")
grpc.channel_ready_future(channel).result(timeout=120)


def vm_hwm_mib():
    with open(f"/proc/{slimd.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0


def unary(method, request, response_type, tenant="alice", timeout=120):
    """(code, message, response or None)"""
    call = channel.unary_unary(f"/slim.v1.Slim/{method}", request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=response_type.FromString)
    try:
        return grpc.StatusCode.OK, "", call(request, timeout=timeout, metadata=[("authorization", f"Bearer {tokens[tenant]}")])
    except grpc.RpcError as e:
        return e.code(), e.details() or "", None


def expect(what, result, code, *named):
    got, message, _ = result
    check(got == code, f"{what}: {got} {message!r}, expected {code}")
    for n in named:
        check(n in message, f"{what}: the message does not name {n!r}: {message!r}")
    check("0x" not in message and " at " not in message.split(":")[0], f"{what}: looks like a stack trace: {message!r}")
    check(DATA not in message, f"{what}: the message shows the server's data path: {message!r}")


def healthy():
    call = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    return call(b"", timeout=10) == b"\x08\x01"  # HealthCheckResponse{status: SERVING}


def upload(name, data, fmt="text", tenant="alice", declared=None):
    header = pb.UploadDatasetRequest(header=pb.UploadDatasetHeader(
        name=name, format=fmt, size_bytes=len(data) if declared is None else declared,
        sha256=hashlib.sha256(data).hexdigest()))
    parts = [header] + [pb.UploadDatasetRequest(chunk=data[i:i + 65536]) for i in range(0, len(data), 65536)]
    call = channel.stream_unary("/slim.v1.Slim/UploadDataset", request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=pb.UploadDatasetResponse.FromString)
    try:
        return grpc.StatusCode.OK, "", call(iter(parts), timeout=60,
                                            metadata=[("authorization", f"Bearer {tokens[tenant]}")])
    except grpc.RpcError as e:
        return e.code(), e.details() or "", None


def spec(dataset, **training):
    s = pb.JobSpec()
    s.model.preset = "tiny"
    s.data.train.add(dataset=dataset)
    s.training.seq_len = training.pop("seq_len", 256)
    s.training.batch_size = training.pop("batch_size", 2)
    s.training.steps = training.pop("steps", 4)
    s.training.optimizer.lr = 1e-3
    s.memory.quota = training.pop("quota", "16MiB")
    return s


text = ("slim trains causal performers in memory slices. " * 400).encode()
code, message, uploaded = upload("corpus", text)
check(code == grpc.StatusCode.OK, f"upload: {code} {message}")
dataset = uploaded.dataset.id
code, message, bobs = upload("bob-corpus", text, tenant="bob")
bob_dataset = bobs.dataset.id if bobs else ""

# ---- 5: bad input is refused, naming the field ------------------------------------------------
s = spec(dataset)
s.training.batch_size = 2147483647
expect("batch_size 2^31-1", unary("CreateJob", pb.CreateJobRequest(spec=s), pb.CreateJobResponse),
       grpc.StatusCode.INVALID_ARGUMENT, "training.batch_size")
for field in ["steps", "grad_accum"]:
    s = spec(dataset)
    setattr(s.training, field, 2147483647)
    expect(f"{field} 2^31-1", unary("CreateJob", pb.CreateJobRequest(spec=s), pb.CreateJobResponse),
           grpc.StatusCode.INVALID_ARGUMENT, f"training.{field}")
s = spec(dataset)
s.training.ClearField("steps")
s.training.epochs = 1e300
expect("epochs 1e300", unary("CreateJob", pb.CreateJobRequest(spec=s), pb.CreateJobResponse),
       grpc.StatusCode.INVALID_ARGUMENT, "training.epochs")
s = spec(dataset)
s.training.optimizer.lr = 1e308
expect("lr 1e308", unary("CreateJob", pb.CreateJobRequest(spec=s), pb.CreateJobResponse),
       grpc.StatusCode.INVALID_ARGUMENT, "training.optimizer.lr")


def double_fields(message, prefix=""):
    """Every double field of the spec, by its path (e.g. training.optimizer.lr)."""
    out = []
    for field in message.DESCRIPTOR.fields:
        path = prefix + field.name
        if field.type == field.TYPE_DOUBLE:
            out.append(path)
        elif field.type == field.TYPE_MESSAGE and field.label != field.LABEL_REPEATED:
            out += double_fields(getattr(message, field.name), path + ".")
    return out


doubles = double_fields(pb.JobSpec())
check(len(doubles) >= 11, f"only {len(doubles)} double fields found: {doubles}")
for path in doubles:
    for value in [math.nan, math.inf, -math.inf]:
        s = spec(dataset)
        if path.startswith("training.lora."):
            s.training.tuning = "lora"
        *parents, leaf = path.split(".")
        target = s
        for p in parents:
            target = getattr(target, p)
        setattr(target, leaf, value)
        expect(f"{path} = {value}", unary("PlanJob", pb.PlanJobRequest(spec=s), pb.PlanJobResponse),
               grpc.StatusCode.INVALID_ARGUMENT, path)

s = spec(dataset, quota="96MiB\x00x")
expect("quota with a NUL", unary("PlanJob", pb.PlanJobRequest(spec=s), pb.PlanJobResponse),
       grpc.StatusCode.INVALID_ARGUMENT, "memory.quota")
# A quota that fits the job at some chunk size, but not at the one the spec fixes: the message
# names the chunk size, and the minimum it gives is that chunk size's (more than the quota).
s = spec(dataset, seq_len=4096, quota="1MiB")
code, message, planned = unary("PlanJob", pb.PlanJobRequest(spec=s), pb.PlanJobResponse)
auto_minimum = planned.min_quota_bytes if planned else 0
check(code == grpc.StatusCode.OK and not planned.feasible and auto_minimum > 0, f"plan at 1 MiB: {code} {message!r}")
s = spec(dataset, seq_len=4096, quota=str(auto_minimum + (1 << 20)))
s.memory.chunk_size = 4096
code, message, _ = unary("CreateJob", pb.CreateJobRequest(spec=s), pb.CreateJobResponse)
fixed_minimum = int(message.split("min_quota_bytes=")[1].split(")")[0]) if "min_quota_bytes=" in message else 0
check(code == grpc.StatusCode.RESOURCE_EXHAUSTED and "memory.chunk_size 4096" in message and
      fixed_minimum > auto_minimum + (1 << 20), f"a fixed chunk size that does not fit: {code} {message!r}")

for name in ["bad\x1b[31mname", "nul\x00name", "tab\tname"]:
    expect(f"job name {name!r}", unary("CreateJob", pb.CreateJobRequest(spec=spec(dataset), display_name=name),
                                       pb.CreateJobResponse), grpc.StatusCode.INVALID_ARGUMENT, "display_name")
    expect(f"dataset name {name!r}", upload(name, b"some text\n"), grpc.StatusCode.INVALID_ARGUMENT, "name")
    expect(f"model name {name!r}", unary("ImportModel", pb.ImportModelRequest(
        path=os.path.join(SRC, "models/base-mini.safetensors"), name=name), pb.ImportModelResponse, "ops"),
        grpc.StatusCode.INVALID_ARGUMENT, "name")

expect("random bytes as jsonl", upload("random", os.urandom(50000), fmt="jsonl"), grpc.StatusCode.INVALID_ARGUMENT,
       "random:1", "invalid JSON")
expect("jsonl lines that are not objects", upload("lines", b'{"text": "a"}\n[1, 2]\n', fmt="jsonl"),
       grpc.StatusCode.INVALID_ARGUMENT, "lines:2")
# The text field is chosen per job (data.text_field), so a job whose field the lines lack is
# refused when it is created, naming the field.
code, message, other = upload("other-field", b'{"body": "some text"}\n' * 400, fmt="jsonl")
check(code == grpc.StatusCode.OK, f"jsonl upload: {code} {message}")
if other:
    s = spec(other.dataset.id)
    s.data.train[0].format = "jsonl"
    expect("a job whose jsonl lines lack data.text_field",
           unary("CreateJob", pb.CreateJobRequest(spec=s), pb.CreateJobResponse), grpc.StatusCode.INVALID_ARGUMENT,
           f"spec: data.train[0]: dataset {other.dataset.id}:1: no \"text\" field")
    s.data.train[0].text_field = "body"
    code, message, _ = unary("PlanJob", pb.PlanJobRequest(spec=s), pb.PlanJobResponse)
    check(code == grpc.StatusCode.OK, f"the same dataset with data.text_field body: {code} {message!r}")
expect("a size that lies", upload("short", b"abc", declared=10), grpc.StatusCode.INVALID_ARGUMENT, "size")

# ---- 6: admin paths ---------------------------------------------------------------------------
code, message, _ = unary("ImportModel", pb.ImportModelRequest(path="/etc/shadow", name="shadow"),
                         pb.ImportModelResponse, "ops")
check(code != grpc.StatusCode.OK, "importing /etc/shadow succeeded")
with open("/etc/shadow", "rb") as f:
    head = f.read(8)
check(str(struct.unpack("<Q", head)[0]) not in message and head.decode(errors="ignore") not in message,
      f"importing /etc/shadow echoes its bytes: {message!r}")
fifo = os.path.join(TMP, "model.fifo")
os.mkfifo(fifo)
t0 = time.monotonic()
expect("a FIFO as a model", unary("ImportModel", pb.ImportModelRequest(path=fifo, name="fifo"),
                                  pb.ImportModelResponse, "ops", timeout=30),
       grpc.StatusCode.INVALID_ARGUMENT, "regular file")
with open(os.path.join(SRC, "models/base-mini.safetensors"), "rb") as f:
    weights = bytearray(f.read())
header_size = struct.unpack("<Q", weights[:8])[0]
header = json.loads(weights[8:8 + header_size])
first = next(v for k, v in sorted(header.items()) if k != "__metadata__" and v["dtype"] == "F32")
start = 8 + header_size + first["data_offsets"][0]
weights[start:start + 4] = struct.pack("<f", math.nan)
nan_model = os.path.join(TMP, "nan.safetensors")
with open(nan_model, "wb") as f:
    f.write(weights)
# Refused: by the file's checksum here (the NaN was written after it was computed); a file whose
# checksum covers the NaN is refused as "not finite" (ModelFile tests).
code, message, _ = unary("ImportModel", pb.ImportModelRequest(path=nan_model, name="nan"), pb.ImportModelResponse, "ops")
check(code == grpc.StatusCode.INVALID_ARGUMENT and ("finite" in message or "corrupted" in message),
      f"NaN weights: {code} {message!r}")
expect("an admin's job on a tenant's dataset", unary("CreateJob", pb.CreateJobRequest(spec=spec(dataset)),
                                                     pb.CreateJobResponse, "ops"),
       grpc.StatusCode.FAILED_PRECONDITION, "alice")
expect("a tenant's job on another tenant's dataset", unary("CreateJob", pb.CreateJobRequest(spec=spec(bob_dataset)),
                                                           pb.CreateJobResponse, "alice"),
       grpc.StatusCode.NOT_FOUND)

# ---- 1: oversized plans are bounded: they answer, and slimd's memory stays flat ----------------
for batch in [50, 4000]:
    s = spec(dataset, seq_len=2048, batch_size=batch, quota="4GiB")
    code, message, _ = unary("PlanJob", pb.PlanJobRequest(spec=s), pb.PlanJobResponse, timeout=300)
    check(code in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED), f"plan at batch {batch}: {code} {message}")
    print(f"plan at batch {batch}: {code.name}; slimd VmHWM {vm_hwm_mib():.1f} MiB", flush=True)

# ---- 3: idempotent creates ---------------------------------------------------------------------
first = unary("CreateJob", pb.CreateJobRequest(spec=spec(dataset), request_id="hostile-1"), pb.CreateJobResponse)
again = unary("CreateJob", pb.CreateJobRequest(spec=spec(dataset), request_id="hostile-1"), pb.CreateJobResponse)
check(first[0] == again[0] == grpc.StatusCode.OK and first[2].job.id == again[2].job.id,
      f"a repeated request_id: {first[:2]} / {again[:2]}")
expect("a request_id reused for another spec",
       unary("CreateJob", pb.CreateJobRequest(spec=spec(dataset, steps=5), request_id="hostile-1"),
             pb.CreateJobResponse), grpc.StatusCode.ALREADY_EXISTS, "request_id", "spec")

# ---- 2: an abandoned Generate stops its sampler ---------------------------------------------------
code, message, imported = unary("ImportModel", pb.ImportModelRequest(
    path=os.path.join(SRC, "models/base-mini.safetensors"), name="base"), pb.ImportModelResponse, "ops")
check(code == grpc.StatusCode.OK, f"import: {code} {message}")
generate = channel.unary_stream("/slim.v1.Slim/Generate", request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=pb.GenerateResponse.FromString)


def generate_with_deadline(prompt_bytes, seconds):
    try:
        for _ in generate(pb.GenerateRequest(model=imported.model.id, prompt="slim " * (prompt_bytes // 5),
                                             max_tokens=5), timeout=seconds,
                          metadata=[("authorization", "Bearer tok-alice")]):
            pass
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""


# 7 MiB of prompt does not fit the sampler's reservation: refused at once, not computed for minutes.
code, message = generate_with_deadline(7 << 20, 30)
check(code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"a 7 MiB prompt: {code} {message!r}")
# 600 kB takes tens of seconds to read here: the client gives up after 3 s, and the sampler goes.
code, message = generate_with_deadline(600000, 3)
check(code == grpc.StatusCode.DEADLINE_EXCEEDED, f"abandoned generate: {code} {message!r}")


def samplers():
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == slimd.pid and b"generate" in args:
            found.append(pid)
    return found


for _ in range(300):  # killed when the client goes: polled about every 100 ms
    if not samplers():
        break
    time.sleep(0.1)
check(not samplers(), f"the abandoned generation's sampler still runs: {samplers()}")
code, message, _ = unary("PlanJob", pb.PlanJobRequest(spec=spec(bob_dataset)), pb.PlanJobResponse, "bob", timeout=30)
check(code == grpc.StatusCode.OK, f"another tenant after the abandoned generate: {code} {message}")

# An abandoned create: both executor threads busy with slow generations, a CreateJob whose
# deadline passes while it waits is not created later.
busy = [threading.Thread(target=generate_with_deadline, args=(600000, 8)) for _ in range(2)]
for t in busy:
    t.start()
time.sleep(1.5)  # both have reached the executor
code, message, _ = unary("CreateJob", pb.CreateJobRequest(spec=spec(dataset), display_name="abandoned-create"),
                         pb.CreateJobResponse, timeout=1)
check(code == grpc.StatusCode.DEADLINE_EXCEEDED, f"a create behind busy executors: {code} {message!r}")
for t in busy:
    t.join()
time.sleep(2)  # the executor has reached the abandoned call by now
code, message, listed = unary("ListJobs", pb.ListJobsRequest(page_size=1000), pb.ListJobsResponse)
check(code == grpc.StatusCode.OK and all(j.display_name != "abandoned-create" for j in listed.jobs),
      "a create whose client gave up was created anyway")

# ---- afterwards: healthy, no partial files, memory within the bound --------------------------------
check(healthy(), "slimd is not SERVING after the hostile cases")
leftovers = []
for root, _, files in os.walk(os.path.join(DATA, "tmp")):
    leftovers += [os.path.join(root, f) for f in files if not f.endswith(".log")]
check(not leftovers, f"partial files left in the data directory's tmp: {leftovers}")
peak = vm_hwm_mib()
print(f"slimd peak resident memory (VmHWM) through every case: {peak:.1f} MiB (bound {SLIMD_PEAK_BOUND_MIB} MiB)")
check(0 < peak < SLIMD_PEAK_BOUND_MIB, f"slimd's peak resident memory {peak:.1f} MiB")

slimd.terminate()
slimd.wait(timeout=120)
if failures:
    log.flush()
    sys.stderr.write(open(os.path.join(TMP, "slimd.log")).read()[-4000:])
    sys.exit(f"{len(failures)} failure(s)")
shutil.rmtree(TMP, ignore_errors=True)
print("hostile_client_test: all checks passed")
