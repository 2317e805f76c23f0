#!/usr/bin/env bash
# Build the serving image, run it, call every endpoint with curl and print the answers, then stop
# the container (also on failure). Needs docker, curl and python3 (stdlib only, for JSON).
#
#   bash scripts/docker-smoke.sh                 # build flowserve:smoke from this checkout
#   IMAGE=flowserve:dev NO_BUILD=1 bash scripts/docker-smoke.sh
#   BUILD_ARGS="--build-arg PYTHON_IMAGE=my/python:3.11-slim" bash scripts/docker-smoke.sh
#
# The container shares the host network (--network host), listening on a free port (PORT=...
# to choose) with an API key, so the auth path is exercised too. WORKERS=N sets the uvicorn
# workers (default 1; with several, /metrics sums the counts of all workers).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-flowserve:smoke}
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
KEY=smoke-key
NAME=flowserve-smoke-$$
BASE=http://127.0.0.1:$PORT
TMP=$(mktemp -d)

if [ -z "${NO_BUILD:-}" ]; then
  echo "### docker build -t $IMAGE ."
  # shellcheck disable=SC2086  # BUILD_ARGS is a list of words on purpose
  docker build --network host -q ${BUILD_ARGS:-} -t "$IMAGE" . >/dev/null
fi
echo "### image $IMAGE: $(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB (%.0f MiB)", $1/1e6, $1/1048576}')"

docker run -d --rm --name "$NAME" --network host \
  -e FLOWSERVE_PORT="$PORT" -e FLOWSERVE_API_KEYS="$KEY" -e FLOWSERVE_WORKERS="${WORKERS:-1}" \
  "$IMAGE" >/dev/null
cleanup() {
  docker stop -t 5 "$NAME" >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

echo "### waiting for $BASE/readyz"
for _ in $(seq 120); do
  if curl -fsS "$BASE/readyz" >/dev/null 2>&1; then break; fi
  if ! docker inspect "$NAME" >/dev/null 2>&1; then echo "container exited" >&2; exit 1; fi
  sleep 0.5
done
curl -fsS "$BASE/readyz" >/dev/null || { docker logs "$NAME" >&2; exit 1; }

show() {  # show METHOD PATH [curl args...]: print the call, the status and a bounded body
  local method=$1 path=$2
  shift 2
  echo
  echo "### $method $path"
  curl -sS -X "$method" "$BASE$path" -H "X-API-Key: $KEY" -o "$TMP/body" \
    -w '%{http_code}' "$@" >"$TMP/status"
  echo "HTTP $(cat "$TMP/status")"
  if [ "${BODY:-1}" = 1 ]; then head -c 700 "$TMP/body"; echo; fi
}
json() { python3 -c "import json, sys; d = json.load(open('$TMP/body')); print(json.dumps($1))"; }

show GET /healthz
show GET /readyz
show GET /models
MODEL=$(json 'd["default"]')
MODEL=${MODEL//\"/}
show GET "/models/$MODEL"
show POST /sample -H 'Content-Type: application/json' -d '{"n": 3, "seed": 0}'
ROWS=$(json 'd["samples"]')
show POST /log_prob -H 'Content-Type: application/json' -d "{\"inputs\": $ROWS}"
show POST /score -H 'Content-Type: application/json' -d "{\"inputs\": $ROWS, \"fpr\": 0.05}"
show POST "/models/$MODEL/encode" -H 'Content-Type: application/json' -d "{\"inputs\": $ROWS}"
Z=$(json 'd["z"]')
show POST "/models/$MODEL/decode" -H 'Content-Type: application/json' -d "{\"inputs\": $Z}"
echo "(decode(encode(x)) should give back the sampled rows: $ROWS)"

# Binary bulk body: a .npy made and read inside the container (it has numpy; the host may not).
docker exec "$NAME" python -c "import numpy as np, sys, json; np.save(sys.stdout.buffer, np.asarray(json.loads(sys.argv[1]), np.float32))" "$ROWS" >"$TMP/x.npy"
BODY=0 show POST "/score?fpr=0.05" -H 'Content-Type: application/x-npy' -H 'Accept: application/x-npy' \
  --data-binary "@$TMP/x.npy" -D "$TMP/headers"
grep -i '^x-flowserve' "$TMP/headers" || true
docker exec -i "$NAME" python -c "import io, sys, numpy as np; print('npy [log_prob, percentile, is_anomaly]:'); print(np.load(io.BytesIO(sys.stdin.buffer.read())))" <"$TMP/body"

FLAT=$(python3 -c "import json; r = json.loads('$ROWS'); print(json.dumps([v for row in r for v in row]))")
N=$(python3 -c "import json; print(len(json.loads('$ROWS')))")
D=$(python3 -c "import json; print(len(json.loads('$ROWS')[0]))")
show GET "/v2/models/$MODEL"
show POST "/v2/models/$MODEL/infer" -H 'Content-Type: application/json' \
  -d "{\"id\": \"smoke\", \"inputs\": [{\"name\": \"x\", \"shape\": [$N, $D], \"datatype\": \"FP32\", \"data\": $FLAT}], \"outputs\": [{\"name\": \"log_prob\"}, {\"name\": \"is_anomaly\"}]}"

echo
echo "### errors"
show POST /log_prob -H 'Content-Type: application/json' -d '{"inputs": [[1.0]]}'
show POST /models/nope/log_prob -H 'Content-Type: application/json' -d '{"inputs": [[1.0]]}'
echo
echo "### POST /sample without the API key"
curl -sS -X POST "$BASE/sample" -H 'Content-Type: application/json' -d '{"n": 1}' -w '\nHTTP %{http_code}\n'

BODY=0 show GET /metrics
# With several workers each process counts its own requests; this is one worker's view.
grep -E '^flowserve_requests_total' "$TMP/body" | head -8 || true

HEALTH_CMD=$(docker inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)[1])')
echo
echo "### the image's HEALTHCHECK command, run now: $(docker exec "$NAME" sh -c "$HEALTH_CMD" && echo ok)"
echo "### container: user $(docker exec "$NAME" id -u), torch importable: $(docker exec "$NAME" python -c 'import importlib.util; print(importlib.util.find_spec("torch") is not None)')"
echo "### smoke test passed"
