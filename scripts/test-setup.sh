#!/usr/bin/env bash
# test-setup.sh checks scripts/setup.sh's checksum guard in a scratch copy of the
# project: a model that does not match scripts/SHA256SUMS must stop the set-up with a
# message saying what to do, and must not be left behind; a good copy must pass.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/project/scripts" "$tmp/shared/models" "$tmp/shared/labels" "$tmp/shared/images"
cp "$root/scripts/setup.sh" "$root/scripts/SHA256SUMS" "$tmp/project/scripts/"
cp "$root/assets/labels/imagenet_classes.txt" "$tmp/shared/labels/"
cp "$root/assets/images/dog.jpg" "$tmp/shared/images/"
cp "$root/assets/models/resnet18-untrained.onnx" "$tmp/shared/models/"
head -c 1000 "$root/assets/models/mobilenetv2-12-int8.onnx" >"$tmp/shared/models/mobilenetv2-12-int8.onnx"

fail() { echo "test-setup: FAIL: $*" >&2; exit 1; }
if out=$(INFERGATE_SHARED="$tmp/shared" "$tmp/project/scripts/setup.sh" assets 2>&1); then
	fail "a corrupt model was accepted"
fi
grep -q "wrong SHA-256" <<<"$out" || fail "no checksum message: $out"
grep -q "Fetch it again" <<<"$out" || fail "the message does not say what to do: $out"
[ ! -e "$tmp/project/assets/models/mobilenetv2-12-int8.onnx" ] || fail "the corrupt model was left in place"

cp "$root/assets/models/mobilenetv2-12-int8.onnx" "$tmp/shared/models/"
INFERGATE_SHARED="$tmp/shared" "$tmp/project/scripts/setup.sh" assets 2>/dev/null || fail "a good copy was refused"
cmp -s "$tmp/shared/models/mobilenetv2-12-int8.onnx" "$tmp/project/assets/models/mobilenetv2-12-int8.onnx" || fail "the model was not copied"
echo "test-setup: 2 passed, 0 failed"
