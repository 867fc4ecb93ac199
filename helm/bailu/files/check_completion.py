# The `helm test` check (run by the gateway image's Python): the gateway is ready, and one chat
# completion with the API key from the Secret succeeds. Configured by GATEWAY_URL, API_KEY,
# MODEL and READY_TIMEOUT_S.
import json
import os
import sys
import time
import urllib.error
import urllib.request

url = os.environ["GATEWAY_URL"].rstrip("/")
key = os.environ.get("API_KEY", "").strip()
model = os.environ.get("MODEL", "")
deadline = time.monotonic() + float(os.environ.get("READY_TIMEOUT_S", "240"))

while True:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
            print("readyz:", response.status, response.read().decode().strip(), flush=True)
            break
    except (urllib.error.URLError, OSError) as exc:
        if time.monotonic() > deadline:
            sys.exit(f"FAIL: {url}/readyz is not ready: {exc}")
        time.sleep(min(3.0, max(0.0, deadline - time.monotonic()) + 0.1))

if not key:
    sys.exit("FAIL: no API key: the Secret has no plain key (gateway.apiKeys.plainKeyKey)")
body = {
    "model": model,
    "messages": [{"role": "user", "content": "Write one short line about autumn light."}],
    "max_tokens": 8,
}
request = urllib.request.Request(
    url + "/v1/chat/completions",
    data=json.dumps(body).encode(),
    headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
)
try:
    with urllib.request.urlopen(request, timeout=120) as response:
        reply = json.load(response)
except urllib.error.HTTPError as exc:
    sys.exit(f"FAIL: completion: HTTP {exc.code}: {exc.read().decode(errors='replace')}")
text = reply["choices"][0]["message"]["content"]
if not isinstance(text, str) or reply.get("model") != model:
    sys.exit(f"FAIL: unexpected reply: {reply}")
print("completion:", json.dumps(text), "usage:", reply.get("usage"), flush=True)
print("PASS")
