#!/usr/bin/env python3
"""slimd's HTTP side (/metrics and the status page) against hostile and ordinary clients.

   metrics_http_test.py SLIMD SLIM_TRAIN

1. Slow clients (one byte a second, and silent ones) do not hold up scrapes: /metrics answers
   while they are still connected; a trickling client is cut off at --metrics-request-deadline.
2. Methods and paths: POST is 405, an unknown path 404.
3. --metrics-web-config in Prometheus' format: TLS (plain HTTP to the port fails), basic
   authentication (401 without or with a wrong password, 200 with the right one, on / too),
   client certificates (403 without one, 200 with one the client CA signed); promtool accepts
   the same file and a real Prometheus scrapes slimd with it.
4. Bad web configurations stop slimd with a message naming the setting.
Ordering, not wall-clock speed, is asserted: a scrape must complete while the slow clients are
still connected. Socket timeouts are generous deadlines against hangs.
"""
import base64
import crypt
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import warnings

SLIMD, TRAIN = sys.argv[1], sys.argv[2]
TMP = tempfile.mkdtemp(prefix="metrics-http-")
procs = []


def fail(message):
    for p in procs:
        p.kill()
    for name in sorted(os.listdir(TMP)):
        if name.endswith(".log"):
            sys.stderr.write(f"--- {name}\n" + open(os.path.join(TMP, name)).read()[-3000:])
    sys.exit(f"FAIL: {message}")


def check(condition, message):
    if not condition:
        fail(message)


def start_slimd(name, *extra):
    """Starts slimd; returns (process, port) once it reports its metrics address."""
    log = os.path.join(TMP, name + ".log")
    p = subprocess.Popen([SLIMD, "--listen", f"unix:{TMP}/{name}.sock", "--data-dir", f"{TMP}/{name}-data",
                          "--devices", "cpu:64MiB", "--worker-footprint", "0", "--worker-binary", TRAIN,
                          "--metrics-address", "127.0.0.1:0", *extra], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    procs.append(p)
    for _ in range(300):
        text = open(log).read()
        for line in text.splitlines():
            if "metrics on http" in line:
                return p, int(line.split("/metrics")[0].rsplit(":", 1)[1])
        if p.poll() is not None:
            fail(f"{name}: slimd exited early: {text}")
        time.sleep(0.1)
    fail(f"{name}: slimd did not report its metrics address")


def stop(p):
    p.terminate()
    p.wait(timeout=60)


def request(port, path="/metrics", method="GET", headers=(), context=None, timeout=20):
    """One HTTP/1.1 request on a fresh connection; returns (status, headers text, body)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    conn = context.wrap_socket(raw, server_hostname="localhost") if context else raw
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    for h in headers:
        head += h + "\r\n"
    conn.sendall((head + "\r\n").encode())
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    conn.close()
    top, _, body = data.partition(b"\r\n\r\n")
    status = int(top.split(b" ")[1]) if top.startswith(b"HTTP/") else 0
    return status, top.decode(errors="replace"), body.decode(errors="replace")


def basic(user, password):
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, cwd=TMP, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---- 1 and 2: slow clients, deadlines, methods ----------------------------------------------
slimd, port = start_slimd("plain", "--metrics-request-deadline", "3")
status, _, body = request(port)
check(status == 200 and "slim_" in body, f"/metrics: {status} {body[:200]}")

slow = []
for _ in range(4):  # silent after a partial request line, and trickling
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /metr")
    slow.append(s)
for i in range(5):
    status, _, body = request(port)
    check(status == 200 and "slim_jobs" in body, f"scrape {i} with slow clients connected: {status}")
# The slow clients are still connected (nothing from the server yet): the scrapes above were
# served beside them, not after them.
for s in slow:
    s.setblocking(False)
    try:
        check(s.recv(1) != b"", "a slow client was answered or closed before the scrapes")
    except BlockingIOError:
        pass
    s.setblocking(True)

# A trickling client is ended at the deadline (3 s here), long before its 60 bytes are sent.
t = slow[0]
t.settimeout(30)
cut = False
for i in range(60):
    try:
        t.sendall(b"x")
    except OSError:
        cut = True
        break
    try:
        t.settimeout(1)
        if t.recv(1024) == b"":
            cut = True
            break
    except socket.timeout:
        pass
    except OSError:
        cut = True
        break
check(cut and i < 40, f"a trickling client was not cut off at the request deadline (bytes sent: {i})")
for s in slow:
    s.close()

status, _, _ = request(port, method="POST")
check(status == 405, f"POST /metrics: {status}, expected 405")
status, _, body = request(port, path="/nope")
check(status == 404, f"GET /nope: {status}, expected 404")
status, _, body = request(port, path="/")
check(status == 200 and "<html" in body.lower(), f"status page: {status}")
stop(slimd)

# ---- 3: TLS, basic authentication, client certificates ---------------------------------------
openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.crt", "-days", "2",
        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=slim test client CA")
openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=prometheus")
openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "client.crt", "-days", "2")
openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.crt", "-days", "2",
        "-subj", "/CN=other")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    hash_ = crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 4))


def write(name, text):
    with open(os.path.join(TMP, name), "w") as f:
        f.write(text)
    return os.path.join(TMP, name)


web = write("web.yml", f"""# Prometheus' web configuration format; paths relative to this file
tls_server_config:
  cert_file: server.crt
  key_file: server.key
basic_auth_users:
  prometheus: '{hash_}'
""")
slimd, port = start_slimd("tls", "--metrics-web-config", web)
check("metrics on https://" in open(os.path.join(TMP, "tls.log")).read(), "slimd does not say its metrics are https")
trusting = ssl.create_default_context(cafile=os.path.join(TMP, "server.crt"))
status, head, _ = request(port, context=trusting)
check(status == 401 and "WWW-Authenticate: Basic" in head, f"no credentials: {status} {head}")
status, _, _ = request(port, context=trusting, headers=[basic("prometheus", "wrong")])
check(status == 401, f"wrong password: {status}")
status, _, _ = request(port, context=trusting, headers=[basic("nobody", "s3cret")])
check(status == 401, f"unknown user: {status}")
for i in range(3):  # the second and third are answered from the remembered match
    status, _, body = request(port, context=trusting, headers=[basic("prometheus", "s3cret")])
    check(status == 200 and "slim_" in body, f"right password, try {i}: {status}")
status, _, body = request(port, path="/", context=trusting, headers=[basic("prometheus", "s3cret")])
check(status == 200 and "<html" in body.lower(), f"status page with the password: {status}")
status, _, _ = request(port, path="/", context=trusting)
check(status == 401, f"status page without the password: {status}")
try:
    status, _, _ = request(port, timeout=10)  # plain HTTP to the TLS port
    check(status == 0, f"plain HTTP to the TLS port answered {status}")
except OSError:
    pass

# The same file is valid for Prometheus' own tools, and a real Prometheus scrapes slimd with it
# (https, the CA, the password) and sees it up.
r = subprocess.run(["promtool", "check", "web-config", web], capture_output=True, text=True)
check(r.returncode == 0, f"promtool check web-config: {r.stdout} {r.stderr}")
probe = socket.socket()
probe.bind(("127.0.0.1", 0))
prom_port = probe.getsockname()[1]
probe.close()
write("password", "s3cret")
prom_config = write("prometheus.yml", f"""global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: slimd
    scheme: https
    tls_config: {{ca_file: {TMP}/server.crt}}
    basic_auth: {{username: prometheus, password_file: {TMP}/password}}
    static_configs: [{{targets: ["localhost:{port}"]}}]
""")
prom = subprocess.Popen(["prometheus", f"--config.file={prom_config}", f"--storage.tsdb.path={TMP}/tsdb",
                         f"--web.listen-address=127.0.0.1:{prom_port}"],
                        stdout=open(os.path.join(TMP, "prometheus.log"), "w"), stderr=subprocess.STDOUT)
procs.append(prom)
up = None
for _ in range(120):
    try:
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?query=" + urllib.parse.quote('up{job="slimd"}')
        result = json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["result"]
        up = result[0]["value"][1] if result else None
        if up == "1":
            break
    except (OSError, ValueError, KeyError):
        pass
    time.sleep(1)
check(up == "1", f"Prometheus scraping slimd over TLS with the password: up = {up}")
prom.terminate()
prom.wait(timeout=60)
stop(slimd)

web = write("mtls.yml", """tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
""")
slimd, port = start_slimd("mtls", "--metrics-web-config", web)


def client_context(cert, key):
    c = ssl.create_default_context(cafile=os.path.join(TMP, "server.crt"))
    c.load_cert_chain(os.path.join(TMP, cert), os.path.join(TMP, key))
    return c


status, _, body = request(port, context=client_context("client.crt", "client.key"))
check(status == 200 and "slim_" in body, f"client certificate from the CA: {status}")
for what, context in [("no client certificate", trusting), ("a certificate from another CA",
                                                            client_context("other.crt", "other.key"))]:
    try:
        status, _, _ = request(port, context=context, timeout=10)
        check(status == 403, f"{what}: {status}, expected 403")
    except (ssl.SSLError, OSError):
        pass  # refused in the handshake is as good
stop(slimd)

# ---- 4: bad web configurations are refused by name -------------------------------------------
cases = [
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n", "tls_server_config.key_file"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n", "tls_server_config.cert_file"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS13\n", "min_version"),
    ("basic_auth_users:\n  prometheus: plaintext\n", "basic_auth_users.prometheus"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequestClientCert\n",
     "client_auth_type"),
    ("http_server_config:\n  http2: false\n", "http_server_config"),
    ("tls_server_config: [\n", "bad.yml"),
]
for text, named in cases:
    path = write("bad.yml", text)
    r = subprocess.run([SLIMD, "--listen", f"unix:{TMP}/bad.sock", "--data-dir", f"{TMP}/bad-data", "--devices",
                        "cpu:64MiB", "--worker-footprint", "0", "--worker-binary", TRAIN, "--metrics-address",
                        "127.0.0.1:0", "--metrics-web-config", path], capture_output=True, text=True, timeout=60)
    check(r.returncode != 0 and "--metrics-web-config" in r.stderr and named in r.stderr,
          f"web config {text!r}: exit {r.returncode}, stderr {r.stderr!r} (expected it to name {named})")
shutil.rmtree(TMP, ignore_errors=True)
print("metrics_http_test: all checks passed")
