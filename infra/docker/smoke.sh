#!/bin/sh
# Starts the compiled server the way the image does (node --max-semi-space-size=64
# --initial-old-space-size=128 dist/main.js),
# in the current folder, on the port given as a flag, with the default model; waits for /readyz,
# generates a few tokens through the OpenAI API, runs the image's HEALTHCHECK against it (which has
# to find the port from the flag), then stops it with SIGTERM and expects a clean exit.
#
#   smoke.sh PORT
set -eu
port="${1:?usage: smoke.sh PORT}"
log="$(mktemp)"
# An unrelated PORT in the environment: the flag must win, for the server and for the health check.
PORT=1 HOST=127.0.0.1 node --max-semi-space-size=64 --initial-old-space-size=128 dist/main.js --port "$port" >"$log" 2>&1 &
server=$!
stop() { kill "$server" 2>/dev/null || true; }
trap stop EXIT

ready=""
for _ in $(seq 1 120); do
  if node -e "fetch('http://127.0.0.1:$port/readyz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"; then
    ready=yes
    break
  fi
  sleep 0.5
done
if [ -z "$ready" ]; then
  echo "smoke: dist/main.js did not become ready on port $port; its log:" >&2
  cat "$log" >&2
  exit 1
fi

node --input-type=module -e "
const response = await fetch('http://127.0.0.1:$port/v1/completions', {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ prompt: 'The jury said', max_tokens: 8, temperature: 0 }),
});
const body = await response.json();
if (!response.ok || body.usage?.completion_tokens < 1) { console.error('smoke: completion failed', response.status, JSON.stringify(body)); process.exit(1); }
console.log('smoke: dist/main.js generated', body.usage.completion_tokens, 'tokens:', JSON.stringify(body.choices[0].text));
"

if ! node infra/docker/healthcheck.mjs "$server"; then
  echo "smoke: the health check did not find the server on --port $port" >&2
  exit 1
fi
echo "smoke: health check OK on --port $port"

kill -TERM "$server"
status=0
wait "$server" || status=$?
trap - EXIT
if [ "$status" -ne 0 ]; then
  echo "smoke: dist/main.js exited $status after SIGTERM; its log:" >&2
  cat "$log" >&2
  exit 1
fi
rm -f "$log"
echo "smoke: dist/main.js stopped cleanly on SIGTERM"
