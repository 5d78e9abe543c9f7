#!/usr/bin/env bash
# Kiln's one test command. On a Debian machine (bookworm or trixie) with Rust installed (rustup,
# cargo), from anywhere in the repository:
#
#   bash tests/run.sh              installs what is missing and runs every test
#   bash tests/run.sh STAGE...     only the named stages (run in the order below)
#
# CI (.ci/run) runs exactly `bash tests/run.sh`. The stages:
#
#   packages  installs the Debian packages of the table below that are missing (apt-get, with sudo
#             when not root) and cargo's fmt and clippy (rustup), then checks with dpkg that every
#             package is installed and that every tool and file the tests use comes from its row's
#             package: `bash tests/run.sh packages` does only that (seconds when nothing is missing)
#   python    the export tests' Python environment (tests/python/setup.sh: onnxruntime,
#             transformers and torch from PyPI into target/pyenv, made from Debian's python3)
#   fmt       cargo fmt --check
#   clippy    clippy with the mpi and cuda features: also the compile check of the CUDA build
#   test      cargo test --release --workspace --features kiln-cli/mpi with the Python tests
#             required (KILN_REQUIRE_PYTHON_TESTS=1), then the #[ignore]d tests
#   examples  the examples, as a user runs them
#   guard     the speed guard: Kiln against PyTorch on this CPU (benches/guard.py)
#   haswell   kiln-bench on an emulated CPU without AVX-512 (qemu-x86_64 -cpu Haswell)
#   slurm     a 2-rank training through a one-node Slurm cluster (tests/slurm/one-node.sh, as root)
#
# examples, guard, haswell and slurm run the binaries that the test stage built. The quick path
# with what is installed is plain `cargo test --release --workspace`; README.md ("Tests") says what
# it skips and why.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Debian packages the tests need: one row per tool or file that the build or a test uses.
#   package   what apt-get installs
#   proof     the file the tests use: an absolute path or glob, or a bare command name, which is
#             looked up on PATH as the tests do
#   use       who uses it
# The packages stage installs every package that is not installed, then requires for each row
# that `dpkg -S` of the proof names the package (or a package it depends on, two levels down: the
# versioned packages behind Debian's metapackages, e.g. libclang-dev -> libclang-14-dev).
package_table='
gcc                  cc                                             rustc links with cc; the cc crate compiles C (mpi-sys, libffi-sys)
gcc                  gcc                                            mpicc -show compiles with gcc (mpi-sys)
libc6-dev            /usr/include/stdio.h                           the C headers of those builds
make                 make                                           libffi-sys (under the mpi crate) builds libffi with make
ca-certificates      /usr/share/ca-certificates/mozilla             cargo (crates.io) and pip (PyPI) download over TLS
libclang-dev         /usr/lib/llvm-*/lib/libclang.so                bindgen loads libclang to make the MPI bindings (mpi-sys)
libclang-dev         /usr/lib/llvm-*/lib/clang/*/include/stddef.h   clang headers bindgen parses mpi.h with
openmpi-bin          mpicc                                          mpi-sys finds MPI with mpicc -show
openmpi-bin          mpirun                                         tests/distributed.rs, kiln launch, tests/slurm/one-node.sh
libopenmpi-dev       /usr/lib/*-linux-gnu/openmpi/include/mpi.h     mpi-sys compiles against mpi.h
libopenmpi-dev       /usr/lib/*-linux-gnu/openmpi/lib/libmpi.so     and links libmpi
libvulkan1           /usr/lib/*-linux-gnu/libvulkan.so.1            wgpu loads the Vulkan loader (the wgpu tests)
mesa-vulkan-drivers  /usr/share/vulkan/icd.d/lvp_icd.*.json         lavapipe, the software Vulkan driver the wgpu tests run on
python3              /usr/bin/python3                               the Python that target/pyenv is made from (python stage)
python3-venv         /usr/lib/python3*/ensurepip/__init__.py        python3 -m venv (ensurepip)
qemu-user            qemu-x86_64                                    kiln-bench on an emulated CPU without AVX-512 (haswell stage)
slurm-wlm            /usr/sbin/slurmctld                            the controller of tests/slurm/one-node.sh
slurm-wlm            /usr/sbin/slurmd                               its node daemon
slurm-wlm            srun                                           starts the ranks (one-node.sh)
slurm-wlm            salloc                                         allocates for mpirun when Slurm has no pmix (one-node.sh)
slurm-wlm            sinfo                                          waits for the node (one-node.sh)
slurm-wlm            scancel                                        cleans up (one-node.sh)
munge                /usr/sbin/munged                               Slurm authentication (one-node.sh)
munge                munge                                          checks munged answers (one-node.sh)
munge                unmunge                                        checks munged answers (one-node.sh)
hostname             hostname                                       names the Slurm node (one-node.sh)
procps               /usr/bin/kill                                  signals runs, sweeps and servers (tests/resume.rs, tests/tracking/)
util-linux           unshare                                        kiln plot with the system fonts hidden (tests/tracking/views.rs)
mount                mount                                          mounts over /usr/share/fonts in that namespace
libc-bin             ldd                                            shows kiln links no font library (tests/tracking/views.rs)
openssl              openssl                                        a test CA and server certificate for MLflow over HTTPS (tests/tracking/)
'

all_stages=(packages python fmt clippy test examples guard haswell slurm)
if [[ $# -eq 0 ]]; then
    stages=("${all_stages[@]}")
else
    for s in "$@"; do
        [[ " ${all_stages[*]} " == *" $s "* ]] ||
            { echo "tests/run.sh: unknown stage '$s' (stages: ${all_stages[*]})" >&2; exit 2; }
    done
    stages=("$@")
fi
want() { [[ " ${stages[*]} " == *" $1 "* ]]; }
die() { echo "tests/run.sh: $*" >&2; exit 1; }
start=$SECONDS
# timed STAGE: prints how long the previous stage took, and starts timing STAGE (the CI budget is
# kept per stage: the closing notes say how many minutes each adds).
timed_stage='' timed_start=$SECONDS
timed() {
    [[ -z $timed_stage ]] || echo "-- $timed_stage: $((SECONDS - timed_start)) s"
    timed_stage=$1 timed_start=$SECONDS
}

package_names() { awk 'NF { print $1 }' <<<"$package_table" | sort -u; }
# (grep without -q reads all of dpkg's output: with -q, dpkg could die of SIGPIPE and pipefail fail
# the check.)
installed() { dpkg -s "$1" 2>/dev/null | grep -x 'Status: install ok installed' >/dev/null; }

# need_root WHAT: sets as_root, the prefix that runs a command as root: nothing for root, sudo
# otherwise; without sudo, an error naming WHAT.
as_root=()
need_root() {
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || die "$1 needs root: run as root, or install sudo"
        as_root=(sudo)
    fi
}

# The packages that `dpkg -S` says own PATH. Tries each link of a symlink chain in turn (e.g.
# /usr/bin/mpirun -> /etc/alternatives/mpirun -> /usr/bin/mpirun.openmpi), and on a merged /usr
# the path's other name (/usr/bin/hostname is registered as /bin/hostname on bookworm).
owners() {
    local path=$1 hops=0 target candidate found
    local candidates=()
    while :; do
        candidates+=("$path")
        case $path in
            /usr/bin/* | /usr/sbin/* | /usr/lib/*) candidates+=("${path#/usr}") ;;
            /bin/* | /sbin/* | /lib/*) candidates+=("/usr$path") ;;
        esac
        [[ -L $path && $hops -lt 10 ]] || break
        target=$(readlink "$path")
        [[ $target == /* ]] || target=$(dirname "$path")/$target
        path=$target
        hops=$((hops + 1))
    done
    candidates+=("$(readlink -f "$1")")
    for candidate in "${candidates[@]}"; do
        if found=$(dpkg-query -S "$candidate" 2>/dev/null); then
            grep -v '^diversion ' <<<"$found" | sed 's/: \/.*//' | tr ',' '\n' | sed 's/^ *//; s/:.*//' | sort -u
            return
        fi
    done
}

# PACKAGE and the installed packages it depends on, two levels down.
family() {
    local level=("$1") all=("$1") next p d
    for _ in 1 2; do
        next=()
        for p in "${level[@]}"; do
            for d in $(dpkg-query -W -f='${Depends}, ${Pre-Depends}' "$p" 2>/dev/null |
                sed 's/[,|]/\n/g' | sed 's/^ *//; s/[ :(].*//'); do
                next+=("$d")
            done
        done
        all+=("${next[@]}")
        level=("${next[@]}")
    done
    printf '%s\n' "${all[@]}" | sort -u
}

if want packages; then
    timed packages
    echo "== Debian packages: install what is missing"
    if ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
        die "no dpkg/apt-get: this script sets up Debian machines; elsewhere install the packages of its table yourself and run the other stages: bash tests/run.sh ${all_stages[*]:1}"
    fi
    missing=()
    for pkg in $(package_names); do
        installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        need_root "installing ${missing[*]}"
        echo "installing: ${missing[*]}"
        "${as_root[@]}" apt-get update
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    else
        echo "all $(package_names | wc -l) packages are installed"
    fi
    command -v cargo >/dev/null || die "no cargo: install Rust first (https://rustup.rs)"
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        command -v rustup >/dev/null || die "cargo fmt or cargo clippy is missing, and there is no rustup to add them"
        rustup component add rustfmt clippy
    fi

    echo "== Debian packages: dpkg -s each package; dpkg -S each tool and file the tests use"
    problems=()
    for pkg in $(package_names); do
        installed "$pkg" || problems+=("package $pkg is not installed (dpkg -s $pkg)")
    done
    while read -r pkg proof use; do
        [[ -n $pkg ]] || continue
        if [[ $proof == /* ]]; then
            mapfile -t paths < <(compgen -G "$proof" || true)
        else
            mapfile -t paths < <(command -v "$proof" || true)
        fi
        if [[ ${#paths[@]} -eq 0 ]]; then
            problems+=("$proof is missing ($use): package $pkg should provide it")
            continue
        fi
        relatives=$(family "$pkg")
        for path in "${paths[@]}"; do
            owned_by=$(owners "$path")
            if [[ -z $owned_by ]]; then
                problems+=("$path ($use) belongs to no Debian package: the tests would use it instead of $pkg's")
            elif grep -qxF -f <(printf '%s\n' "$owned_by") <<<"$relatives"; then
                printf '  %-20s %-45s %s\n' "$pkg" "$path" "(${owned_by//$'\n'/ })"
            else
                problems+=("$path ($use) belongs to ${owned_by//$'\n'/ }, which is neither $pkg nor one of its dependencies")
            fi
        done
    done <<<"$package_table"
    if [[ ${#problems[@]} -gt 0 ]]; then
        printf 'tests/run.sh: %s\n' "${problems[@]}" >&2
        die "the packages do not match what the tests use (table at the top of tests/run.sh)"
    fi
fi

# Debian's python3 (the table's), where there is one.
base_python=/usr/bin/python3
[[ -x $base_python ]] || base_python=python3

if want python; then
    timed python
    echo "== Python environment of the export tests (onnxruntime, transformers, torch; target/pyenv)"
    KILN_BASE_PYTHON=$base_python bash tests/python/setup.sh
fi

if want fmt; then
    timed fmt
    echo "== cargo fmt --check"
    cargo fmt --all -- --check
fi

if want clippy; then
    timed clippy
    echo "== cargo clippy (with the CUDA backend: this is also the compile check of the CUDA build)"
    # CUDA cannot run here. Type-checking and linting its code (burn-cuda, cubecl-cuda, cudarc,
    # NCCL) catches what a `cargo build --features cuda` would, short of code generation and
    # linking (cudarc loads the CUDA libraries at run time, so there is nothing to link): a full
    # release build of the CUDA binary cost 7 more minutes of CI on 2 cores.
    cargo clippy --workspace --all-targets --features kiln-cli/mpi,kiln-cli/cuda -- -D warnings
fi

if want test; then
    timed test
    echo "== tests: cargo test --release --workspace --features kiln-cli/mpi (Python tests required)"
    export KILN_REQUIRE_PYTHON_TESTS=1
    cargo test --release --workspace --features kiln-cli/mpi
    echo "== the #[ignore]d tests (onnxruntime against Kiln's ONNX graphs, in kiln-export)"
    # Unit tests only (--lib): `-- --include-ignored` would also compile the doc examples marked
    # `ignore`, which are not meant to compile. Same build as above: nothing is rebuilt.
    cargo test --release --workspace --features kiln-cli/mpi --lib -- --ignored
fi

if want examples; then
    timed examples
    echo "== the examples, as a user runs them (cargo run --release --example NAME; seconds)"
    # The test stage built them (cargo test builds every example) with these features.
    target/release/examples/residual
    target/release/examples/regression
fi

if want guard; then
    timed guard
    echo "== speed guard: Kiln vs PyTorch on this CPU (benches/guard.py, 1-2.5 min)"
    # target/release/kiln and kiln-bench were built by the tests (benches/tests/kiln_bench.rs).
    target/pyenv/bin/python benches/guard.py --python target/pyenv/bin/python
fi

if want haswell; then
    timed haswell
    echo "== the same kiln-bench on a CPU without AVX-512 (qemu-x86_64 -cpu Haswell)"
    qemu-x86_64 -cpu Haswell target/release/kiln-bench --backend flex --model gpt --batch 2 \
        --n-layer 1 --block 16 --warmup 1 --steps 2 2>/dev/null |
        "$base_python" -c 'import json, sys; r = json.load(sys.stdin); assert r["final_loss"] > 0, r; print("ran on Haswell:", r)'
fi

if want slurm; then
    timed slurm
    echo "== Slurm: a one-node cluster runs a 2-rank training (tests/slurm/one-node.sh)"
    need_root "tests/slurm/one-node.sh (it starts the Slurm daemons)"
    "${as_root[@]}" tests/slurm/one-node.sh target/release/kiln
fi

timed ""
echo "tests/run.sh: passed (${stages[*]}) in $(((SECONDS - start) / 60)) min"
