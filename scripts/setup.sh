#!/usr/bin/env bash
# setup.sh installs what infergate needs to run and test, into git-ignored folders:
#   third_party/onnxruntime/lib/libonnxruntime.so.1.24.1  (ONNX Runtime 1.24.1)
#   assets/models/*.onnx, assets/labels/imagenet_classes.txt, assets/images/*.jpg
# It copies from ../shared/assets when that folder exists and downloads otherwise,
# always checking SHA-256. It is idempotent: what is present and correct is kept.
#
# Usage: scripts/setup.sh [runtime|assets|all]   (default: all)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

ORT_VERSION=1.24.1
ORT_DIR=third_party/onnxruntime
ORT_LIB=$ORT_DIR/lib/libonnxruntime.so.$ORT_VERSION
# SHA-256 of libonnxruntime.so.1 as shipped by onnxruntime-node@1.24.1 (linux/x64),
# the same file as lib/libonnxruntime.so.1.24.1 in the official release archive.
ORT_SHA256=${ORT_SHA256:-53ef1ac028dd1b05554b8da28d9159eb3876f99868193d2aaa6e67f0243c23d4}
SHARED=${INFERGATE_SHARED:-$root/../shared/assets}
ASSETS=assets
MODEL_ZOO=https://github.com/onnx/models/raw/main/validated/vision/classification/mobilenet/model/mobilenetv2-12-int8.onnx
MODEL_HF=https://huggingface.co/onnxmodelzoo/mobilenetv2-12-int8/resolve/main/mobilenetv2-12-int8.onnx
LABELS_URL=https://raw.githubusercontent.com/pytorch/hub/master/imagenet_classes.txt

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

sha() { sha256sum "$1" | cut -d' ' -f1; }

fetch() { # fetch URL DEST
	command -v curl >/dev/null || die "curl is needed to download $1"
	curl -fsSL --retry 2 --connect-timeout 15 -o "$2.part" "$1" && mv "$2.part" "$2"
}

# libjpeg makes sure the libjpeg-turbo headers that infer/jpegturbo builds against
# (cgo, -ljpeg) are there: Debian's libjpeg62-turbo-dev.
libjpeg() {
	[ -f /usr/include/jpeglib.h ] && return 0
	local how="install the libjpeg-turbo headers (Debian: libjpeg62-turbo-dev, Ubuntu: libjpeg-turbo8-dev), or build with -tags nojpegturbo to decode JPEG with image/jpeg only"
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		say "installing libjpeg62-turbo-dev (libjpeg-turbo headers for infer/jpegturbo)"
		if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjpeg62-turbo-dev >/dev/null 2>&1 ||
			{ apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjpeg62-turbo-dev >/dev/null; }; }; then
			say "warning: could not install libjpeg62-turbo-dev: $how"
		fi
	else
		say "warning: /usr/include/jpeglib.h is missing: $how"
	fi
}

runtime() {
	libjpeg
	if [ -f "$ORT_LIB" ] && [ -f "$ORT_DIR/lib/.verified" ] && [ "$(cat "$ORT_DIR/lib/.verified")" = "$(sha "$ORT_LIB")" ]; then
		return 0
	fi
	mkdir -p "$ORT_DIR/lib"
	local tmp
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' RETURN
	say "fetching ONNX Runtime $ORT_VERSION (npm package onnxruntime-node@$ORT_VERSION)"
	if command -v npm >/dev/null && (cd "$tmp" && npm pack --silent "onnxruntime-node@$ORT_VERSION" >/dev/null 2>"$tmp/npm.err"); then
		tar -xzf "$tmp"/onnxruntime-node-"$ORT_VERSION".tgz -C "$tmp" package/bin/napi-v6/linux/x64/libonnxruntime.so.1 ||
			die "the onnxruntime-node tarball has no linux/x64 libonnxruntime.so.1"
		cp "$tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" "$ORT_LIB"
	else
		say "npm could not fetch onnxruntime-node ($(tail -1 "$tmp/npm.err" 2>/dev/null)); trying the release archive"
		fetch "https://github.com/microsoft/onnxruntime/releases/download/v$ORT_VERSION/onnxruntime-linux-x64-$ORT_VERSION.tgz" "$tmp/ort.tgz" ||
			die "could not download ONNX Runtime $ORT_VERSION. Install it by hand: put libonnxruntime.so.$ORT_VERSION in $ORT_DIR/lib/ or pass --ort-lib"
		tar -xzf "$tmp/ort.tgz" -C "$tmp"
		cp "$tmp/onnxruntime-linux-x64-$ORT_VERSION/lib/libonnxruntime.so.$ORT_VERSION" "$ORT_LIB"
	fi
	if [ -n "$ORT_SHA256" ] && [ "$(sha "$ORT_LIB")" != "$ORT_SHA256" ]; then
		rm -f "$ORT_LIB"
		die "ONNX Runtime library checksum mismatch (want $ORT_SHA256)"
	fi
	grep -q "$ORT_VERSION" <(strings "$ORT_LIB" 2>/dev/null || cat "$ORT_LIB") ||
		say "warning: could not find version $ORT_VERSION in the library's strings"
	ln -sf "libonnxruntime.so.$ORT_VERSION" "$ORT_DIR/lib/libonnxruntime.so"
	sha "$ORT_LIB" >"$ORT_DIR/lib/.verified"
	say "ONNX Runtime $ORT_VERSION installed at $ORT_LIB"
}

# want_model NAME SHA256 [URL...]: copy or download a model and check it.
want() {
	local dest=$1 sum=$2 src=$3
	shift 3
	if [ -f "$dest" ] && { [ -z "$sum" ] || [ "$(sha "$dest")" = "$sum" ]; }; then
		return 0
	fi
	mkdir -p "$(dirname "$dest")"
	if [ -f "$src" ]; then
		install -m 0644 "$src" "$dest"
	else
		local ok=
		for url in "$@"; do
			say "downloading $(basename "$dest") from $url"
			if fetch "$url" "$dest"; then ok=1; break; fi
		done
		[ -n "$ok" ] || die "could not get $(basename "$dest"): no $src and no download worked. Put the file at $dest by hand (SHA-256 $sum)."
	fi
	if [ -n "$sum" ] && [ "$(sha "$dest")" != "$sum" ]; then
		rm -f "$dest"
		die "$(basename "$dest") has the wrong SHA-256 (want $sum); removed it. Fetch it again."
	fi
}

sum_of() { # the SHA-256 recorded for a model in scripts/SHA256SUMS
	awk -v f="$1" '$2 == f {print $1}' scripts/SHA256SUMS
}

assets() {
	want "$ASSETS/models/mobilenetv2-12-int8.onnx" "$(sum_of mobilenetv2-12-int8.onnx)" \
		"$SHARED/models/mobilenetv2-12-int8.onnx" "$MODEL_ZOO" "$MODEL_HF"
	want "$ASSETS/labels/imagenet_classes.txt" "$(sum_of imagenet_classes.txt)" \
		"$SHARED/labels/imagenet_classes.txt" "$LABELS_URL"
	# The ResNet-18-sized model and the photos exist only in ../shared (benchmarks, tests).
	if [ -d "$SHARED" ]; then
		want "$ASSETS/models/resnet18-untrained.onnx" "$(sum_of resnet18-untrained.onnx)" \
			"$SHARED/models/resnet18-untrained.onnx"
		mkdir -p "$ASSETS/images"
		for f in "$SHARED"/images/*.jpg; do
			want "$ASSETS/images/$(basename "$f")" "$(sum_of "$(basename "$f")")" "$f"
		done
	else
		say "no $SHARED: skipping the ResNet-18 benchmark model and the sample photos (tests need them)"
	fi
}

case "${1:-all}" in
runtime) runtime ;;
assets) assets ;;
all) runtime; assets ;;
*) die "usage: $0 [runtime|assets|all]" ;;
esac
