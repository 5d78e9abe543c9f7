#!/usr/bin/env bash
# One-node Slurm test: configures Debian's slurm-wlm as a throwaway one-node cluster on this
# machine, runs a 2-rank Kiln training through it with `srun`, checks the result and tears the
# cluster down again.
#
#   tests/slurm/one-node.sh KILN_BIN [extra args for `kiln train`]     (from the repository root)
#
# KILN_BIN is a kiln binary built with MPI support. It runs
#   srun --mpi=<plugin> -n 2 -N 1 KILN_BIN train configs/smoke.toml --set run.name=slurm-smoke ARGS...
# and passes when srun exits 0, the run's metrics.jsonl exists, and the last JSON line on stdout
# (the training summary) says "workers": 2.
#
# Must run as root (the daemons run as root; CI runs as root). Installs slurm-wlm, munge and
# openmpi-bin with apt-get when they are missing. Everything the cluster writes (slurm.conf,
# state, spool, logs, pid files, a munge key and socket when it starts its own munged) lives in a
# mktemp -d directory that SLURM_CONF points into; /etc/slurm is never touched.
#
# Environment:
#   SLURM_TEST_CMD      the command srun launches instead of "KILN_BIN train configs/smoke.toml
#                       --set run.name=slurm-smoke" (word-split; ARGS are appended). With it the
#                       metrics file is only checked when the output names a "run_dir", e.g.
#                         SLURM_TEST_CMD=/tmp/mpihello/hello tests/slurm/one-node.sh
#                       with an MPI hello that prints {"workers":N} from rank 0.
#   SLURM_TEST_MPI      the srun --mpi plugin (default: pmix when `srun --mpi=list` lists it), or
#                       "mpirun": `salloc -n 2 mpirun -np 2 ...` instead of srun (the default when
#                       Slurm has no pmix plugin).
#   SLURM_TEST_TIMEOUT  seconds the training may take (default 600).
#   SLURM_TEST_PORT     slurmctld port; slurmd uses the next one (default 6817).
#   KEEP_SLURM_TMP=1    keep the temporary directory (configs, daemon logs, captured output).
#
# Why plain `srun` and not `sbatch --wait`: srun streams the ranks' stdout/stderr straight to this
# terminal and returns the job's exit status, so there is no output file to poll; `timeout` bounds
# it and the EXIT trap cancels whatever is left.
#
# MPI wiring: Open MPI 4.1 from Debian 12 is built against the external PMIx 4 (libpmix2), the
# same library Slurm's mpi_pmix (mpi_pmix_v4) plugin uses, so `srun --mpi=pmix` starts the ranks
# directly (no mpirun) and each rank gets its rank, size and local rank (SLURM_LOCALID) from
# slurmstepd's PMIx server. Debian's Open MPI has no Slurm PMI-1/PMI-2 client, so --mpi=pmi2 and
# --mpi=none fail in MPI_Init ("OMPI was not built with SLURM's PMI support"); the fallback is
# mpirun inside an allocation, which reads the allocation from SLURM_* and starts its daemons with
# srun (there every rank's SLURM_LOCALID is 0; the local rank is OMPI_COMM_WORLD_LOCAL_RANK).
set -euo pipefail

start=$SECONDS
die() { echo "one-node.sh: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (the Slurm daemons run as root here)"
if [[ -n ${SLURM_TEST_CMD:-} ]]; then
    read -r -a run_cmd <<<"$SLURM_TEST_CMD"
    run_cmd+=("$@")
    kiln_run=0
else
    [[ $# -ge 1 ]] || die "usage: tests/slurm/one-node.sh KILN_BIN [extra args for kiln train]"
    kiln_bin=$1
    shift
    [[ -x $kiln_bin ]] || die "$kiln_bin is not an executable kiln binary"
    [[ -f configs/smoke.toml ]] || die "run it from the repository root (configs/smoke.toml not found)"
    # An absolute path: the ranks start in this directory anyway, but srun resolves a bare name
    # through PATH.
    kiln_bin=$(cd "$(dirname "$kiln_bin")" && pwd)/$(basename "$kiln_bin")
    run_cmd=("$kiln_bin" train configs/smoke.toml --set run.name=slurm-smoke "$@")
    kiln_run=1
fi
timeout_s=${SLURM_TEST_TIMEOUT:-600}
ctld_port=${SLURM_TEST_PORT:-6817}
slurmd_port=$((ctld_port + 1))

# --- packages ---------------------------------------------------------------------------------
missing=()
for c in slurmctld slurmd srun sinfo scancel munged munge unmunge mpirun; do
    command -v "$c" >/dev/null || missing+=("$c")
done
if ((${#missing[@]})); then
    echo "== installing slurm-wlm munge openmpi-bin (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends slurm-wlm munge openmpi-bin
fi

# --- temporary cluster directory and teardown -------------------------------------------------
tmp=$(mktemp -d /tmp/kiln-slurm.XXXXXX)
chmod 0755 "$tmp" # munged checks the directories above its socket and key
mkdir -p "$tmp"/{state,spool,log,munge}
chmod 0755 "$tmp/munge"
export SLURM_CONF=$tmp/slurm.conf
pids=() # daemons started by this script, killed in reverse order

teardown() {
    local rc=$? i pid
    set +e
    trap - EXIT INT TERM
    if [[ -f $tmp/run.pid && ! -f $tmp/rc ]]; then
        # Interrupted during the run: timeout passes the TERM on to srun/salloc.
        pid=$(cat "$tmp/run.pid")
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    if [[ -f $SLURM_CONF ]] && ((${#pids[@]})); then
        timeout 10 scancel --quiet --user=root >/dev/null 2>&1
    fi
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[i]}
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [[ ${KEEP_SLURM_TMP:-0} == 1 ]]; then
        echo "one-node.sh: kept $tmp (slurm.conf, log/, stdout, stderr)" >&2
    else
        rm -rf "$tmp"
    fi
    echo "elapsed: $((SECONDS - start)) s" >&2
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

show_logs() {
    local f
    for f in "$tmp"/log/*.log; do
        [[ -f $f ]] || continue
        echo "---- $f (last 20 lines)" >&2
        tail -n 20 "$f" >&2
    done
}

# --- munge ------------------------------------------------------------------------------------
# Reuse a running munged (default socket) when one answers; otherwise start one with a fresh key
# and its own socket in $tmp, and point Slurm at that socket with AuthInfo.
auth_info=""
if timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
    echo "== using the running munged"
else
    echo "== starting munged in $tmp/munge"
    dd if=/dev/urandom of="$tmp/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$tmp/munge/munge.key"
    munge_socket=$tmp/munge/munge.socket.2
    munged --foreground --force \
        --socket="$munge_socket" \
        --key-file="$tmp/munge/munge.key" \
        --log-file="$tmp/log/munged.log" \
        --pid-file="$tmp/munge/munged.pid" \
        --seed-file="$tmp/munge/munged.seed" >"$tmp/log/munged.out" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do
        [[ -S $munge_socket ]] && break
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.2
    done
    if ! timeout 5 munge -n -S "$munge_socket" | timeout 5 unmunge -S "$munge_socket" >/dev/null; then
        tail -n 20 "$tmp/log/munged.out" >&2
        die "munged did not start (log above)"
    fi
    auth_info="AuthInfo=socket=$munge_socket"
fi

# --- slurm.conf -------------------------------------------------------------------------------
host=$(hostname -s)
ncpu=$(nproc)
cat >"$SLURM_CONF" <<EOF
# Generated by tests/slurm/one-node.sh: a throwaway one-node cluster.
ClusterName=kiln-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
$auth_info
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# No cgroups: containers often lack cgroup v2 delegation and systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
NodeName=$host NodeAddr=127.0.0.1 CPUs=$ncpu RealMemory=256 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

# --- daemons ----------------------------------------------------------------------------------
echo "== starting slurmctld and slurmd ($host, $ncpu CPUs, SLURM_CONF=$SLURM_CONF)"
slurmctld -D -i -f "$SLURM_CONF" >"$tmp/log/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >"$tmp/log/slurmd.out" 2>&1 &
pids+=($!)

state=""
for _ in $(seq 120); do
    state=$(timeout 5 sinfo -h -n "$host" -o %T 2>/dev/null || true)
    [[ $state == idle ]] && break
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { show_logs; tail -n 20 "$tmp"/log/*.out >&2; die "a Slurm daemon exited (logs above)"; }
    done
    sleep 0.5
done
if [[ $state != idle ]]; then
    show_logs
    tail -n 20 "$tmp"/log/*.out >&2
    die "node $host not idle after 60 s (sinfo state: '${state:-none}'; logs above)"
fi
echo "== node $host idle after $((SECONDS - start)) s"

mpi_list=$(timeout 10 srun --mpi=list 2>&1 || true)
echo "== srun --mpi=list: $(tr -s ' \t\n' ' ' <<<"$mpi_list")"
if [[ -n ${SLURM_TEST_MPI:-} ]]; then
    mpi=$SLURM_TEST_MPI
elif grep -qw pmix <<<"$mpi_list"; then
    mpi=pmix
else
    # Debian's Open MPI has no Slurm PMI-1/PMI-2 client ("OMPI was not built with SLURM's PMI
    # support" under --mpi=pmi2), so without Slurm's pmix plugin the ranks start through mpirun
    # inside an allocation: mpirun sees SLURM_JOB_ID and starts its daemons with srun.
    mpi=mpirun
fi

# --- the run ----------------------------------------------------------------------------------
if ((kiln_run)); then
    # The config has run.overwrite = true; removing the old run makes the metrics check honest.
    rm -rf checkpoints/slurm-smoke
fi
alloc_args=(-n 2 -N 1 --time=$(((timeout_s + 59) / 60 + 1)) --job-name=kiln-slurm-smoke)
((ncpu >= 2)) || alloc_args+=(--overcommit)
if [[ $mpi == mpirun ]]; then
    launch=(salloc "${alloc_args[@]}" mpirun --allow-run-as-root -np 2 --bind-to none)
    launcher="mpirun inside salloc"
else
    launch=(srun --mpi="$mpi" "${alloc_args[@]}")
    launcher="srun --mpi=$mpi"
fi
echo "== ${launch[*]} ${run_cmd[*]}"
# In the background with `wait`: bash runs the INT/TERM traps (and so the teardown) only once a
# foreground command returns, but interrupts `wait` at once.
set +e
(
    timeout --kill-after=10 "$timeout_s" "${launch[@]}" "${run_cmd[@]}" &
    echo $! >"$tmp/run.pid"
    wait $!
    echo $? >"$tmp/rc"
) 2> >(tee "$tmp/stderr" >&2) | tee "$tmp/stdout" &
wait $!
set -e
rc=$(cat "$tmp/rc" 2>/dev/null || echo 1)
if ((rc == 124 || rc == 137)); then
    show_logs
    die "the run did not finish within $timeout_s s"
fi
((rc == 0)) || { show_logs; die "${launch[0]} exited with status $rc"; }

# --- checks -----------------------------------------------------------------------------------
summary=$(grep '^{' "$tmp/stdout" | tail -n 1 || true)
[[ -n $summary ]] || die "no JSON summary on stdout"
grep -q '"workers": *2' <<<"$summary" || die "the summary does not say \"workers\": 2: $summary"
run_dir=$(sed -n 's/.*"run_dir": *"\([^"]*\)".*/\1/p' <<<"$summary")
if ((kiln_run)); then
    metrics=${run_dir:-checkpoints/slurm-smoke}/metrics.jsonl
    [[ -s $metrics ]] || die "$metrics is missing or empty"
    echo "== $metrics: $(wc -l <"$metrics") lines"
elif [[ -n $run_dir ]]; then
    [[ -s $run_dir/metrics.jsonl ]] || die "$run_dir/metrics.jsonl is missing or empty"
fi
echo "slurm one-node test passed (${launcher}, $((SECONDS - start)) s)"
