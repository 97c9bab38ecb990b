# infergate: `make run` starts the server on the defaults, `make test` runs every test.
# Both install what is missing first (scripts/setup.sh: ONNX Runtime, model, labels).

GO          ?= go
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Fuzzing budgets are counts of executions, about 5 s each on the 2-core reference
# machine: with a duration, go1.26's fuzz coordinator can fail a clean run with
# "context deadline exceeded" at the deadline (golang/go#75804, fixed in go1.27).
# FUZZTIME=100000x (or a duration) overrides them all.
FUZZTIME    ?=
CHAOS_COUNT ?= 20
CHAOS_DISK  ?= 1
export CGO_ENABLED := 1

.PHONY: all setup run build test test-setup test-go test-fuzz test-python test-browser test-deps fmt lint check-tidy bench chaos clean

all: build

## setup: fetch ONNX Runtime 1.24.1, the model, the labels and the sample photos (checked by SHA-256)
setup:
	@scripts/setup.sh

## run: start the server on 127.0.0.1:8080 with data/infergate.db and the default model
run: setup
	$(GO) run ./cmd/infergate serve

build:
	$(GO) build -o bin/infergate ./cmd/infergate

## test: the whole suite (Go with -race, fuzzing, the Python client, the browser page)
test: setup test-deps test-setup check-tidy lint test-go test-fuzz test-python test-browser

## test-deps: install what the Python and browser tests need (Debian packages, npm)
test-deps:
	@scripts/install-test-deps.sh

# PostgreSQL for the storage suite's second pass, and Redis: the machine's, or private ones
# (scripts/with-services.sh).
test-go:
	bash scripts/with-services.sh $(GO) test -race -count=1 -timeout 15m ./...

test-fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(or $(FUZZTIME),40000x) ./infer
	$(GO) test -run '^$$' -fuzz '^FuzzTurboDecode$$' -fuzztime $(or $(FUZZTIME),120000x) ./infer/jpegturbo
	$(GO) test -run '^$$' -fuzz '^FuzzClassifyBody$$' -fuzztime $(or $(FUZZTIME),20000x) ./transport
	$(GO) test -run '^$$' -fuzz '^FuzzMessage$$' -fuzztime $(or $(FUZZTIME),25000x) ./transport

## test-setup: the set-up refuses a model whose SHA-256 does not match
test-setup:
	@bash scripts/test-setup.sh

test-python:
	@bash clients/python/run_tests.sh

test-browser:
	@bash web/test/run.sh

fmt:
	gofmt -w $$(git ls-files '*.go')

## lint: gofmt must have nothing to change; go vet; staticcheck (pinned)
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^third_party/')); if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

## check-tidy: go.mod and go.sum must be tidy
check-tidy:
	@cp go.mod /tmp/infergate-go.mod.bak; cp go.sum /tmp/infergate-go.sum.bak
	@$(GO) mod tidy
	@if ! cmp -s go.mod /tmp/infergate-go.mod.bak || ! cmp -s go.sum /tmp/infergate-go.sum.bak; then \
		echo "go mod tidy changes go.mod/go.sum: run it and commit"; \
		cp /tmp/infergate-go.mod.bak go.mod; cp /tmp/infergate-go.sum.bak go.sum; exit 1; fi

## bench: raw ONNX Runtime throughput vs the server under load, same run (out/bench/)
bench: setup
	@bash scripts/bench.sh

## chaos: kill -9 the server CHAOS_COUNT times under mixed load, checking the database after
## each restart, then fill the disk under it (root: mounts a tmpfs; CHAOS_DISK=0 skips that).
## Not part of test. The JSON report goes to out/chaos.json.
chaos: setup
	$(GO) build -o bin/infergate ./cmd/infergate
	$(GO) build -o bin/chaos ./cmd/chaos
	@mkdir -p out
	@bin/chaos --infergate bin/infergate --count $(CHAOS_COUNT) --disk=$(CHAOS_DISK) >out/chaos.json; \
		rc=$$?; cat out/chaos.json; exit $$rc

clean:
	rm -rf bin out
