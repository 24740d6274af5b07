# Gatehouse: the two commands of the README, plus the benchmark.
#   make run    installs what the demo needs, builds, starts the demo
#   make test   installs the test tools too, builds, runs every test suite
#   make bench  installs the benchmark peers, runs the benchmarks against nginx and
#               HAProxy (bench/README.md)
# Each target installs only its own profile of packages (scripts/deps.sh PROFILE);
# target-specific values reach the shared deps and build prerequisites.
.PHONY: all deps build build-san run test bench clean

all: build

DEPS_PROFILE = build
# Extra `meson setup` options for a fresh build directory; CI passes
# MESON_ARGS=-Dwerror=true (.ci/run) so that a new warning fails the build.
MESON_ARGS ?=
run: DEPS_PROFILE = run
test: DEPS_PROFILE = test
bench: DEPS_PROFILE = bench

deps:
	@bash scripts/deps.sh $(DEPS_PROFILE)

build: deps
	@[ -f build/build.ninja ] || meson setup build --buildtype=debugoptimized $(MESON_ARGS) >/dev/null
	@ninja -C build

build-san: deps
	@[ -f build-san/build.ninja ] || meson setup build-san --buildtype=debug \
		-Db_sanitize=address,undefined -Db_lundef=false $(MESON_ARGS) >/dev/null
	@ninja -C build-san

run: build
	@bash scripts/demo.sh

test: build build-san
	@bash tests/run.sh

# Data path vs nginx and HAProxy; sign-in vs Apache + mod_auth_openidc; the
# policy evaluator; policy + decision log end to end; signed-in requests with
# policy, identity and the decision log against nginx/HAProxy plain. Each writes its section
# of bench/README.md.
bench: build
	@bash bench/run.sh
	@python3 bench/authn.py
	@bash bench/policy/run.sh build
	@bash bench/dlog/run.sh build
	@bash bench/policy_e2e/run.sh
	@python3 bench/devices.py
	@python3 bench/signedin.py

clean:
	rm -rf build build-san build-bench
