#!/usr/bin/env bash
# check_multinode.sh: data-parallel training across two "hosts" simulated on this machine (as root).
# Two network namespaces joined by a veth pair on 10.213.7.0/24 (a subnet that exists only between
# them: nothing is added to this machine's own network), each with its own hostname through a
# persistent UTS namespace; mpirun runs inside host h1 and starts the ranks of host h2 through a
# small remote agent that enters h2's namespaces, as ssh would log in. Open MPI then sees two nodes
# (shared memory inside a host, TCP over the veth between them). It checks, one PASS/FAIL line each:
#   1. each host's ranks get local ranks 0 and 1 (the local rank picks the GPU): a small MPI program
#      built with mpicc does the same MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) as dist_mpi.c and
#      prints hostname, rank and local rank (givt-train prints neither per rank);
#   2. 4 ranks with batch_size 4 over TCP end with the weights of one process with batch_size 16
#      (the same global batch): model.safetensors per tensor norm and the logged losses within 1e-5
#      relative, as tests/test_mpi.c and scripts/check_dist.py compare;
#   3. SIGKILL to every process of host h2 (its Open MPI daemon and ranks) after checkpoints were
#      written ends the whole job within 60 s, and the checkpoints stay intact: the newest one
#      before the kill is byte-identical afterwards, every step_ folder is complete, and one process
#      resumes from the newest for one step.
# Usage: bash scripts/check_multinode.sh      (GIVT_BIN=path/givt-train; default ./givt-train)
# Not root, or ip/unshare/nsenter/mpirun/mpicc missing: says why and counts as skipped, except under
# CI=true, where it fails. Cleans up after itself (namespaces, veth, temporary files, processes);
# every wait is bounded. Last line: "N passed, N failed". If the script itself is SIGKILLed, remove
# what it left with: ip netns del givt-mn<PID>-h1; ip netns del givt-mn<PID>-h2.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

BIN=${GIVT_BIN:-./givt-train}
[[ $BIN == /* ]] || BIN=$PWD/$BIN
[[ -e $BIN ]] && BIN=$(readlink -f "$BIN")  # as /proc/PID/exe names it
CFG=$PWD/configs/tiny.ini
NET=10.213.7.0/24 IP1=10.213.7.1 IP2=10.213.7.2
NS1=givt-mn$$-h1 NS2=givt-mn$$-h2 VETH1=gmn$$a VETH2=gmn$$b
export OMP_NUM_THREADS=1
passed=0 failed=0
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# A missing prerequisite: skipped, or a failure in CI (which runs as root with everything installed).
cannot() {
  if [[ ${CI:-} == true ]]; then
    echo "FAIL: cannot run the multi-node check: $*"
    echo "0 passed, 1 failed"
    exit 1
  fi
  echo "skipped: multi-node check: $*"
  echo "0 passed, 0 failed, 1 skipped"
  exit 0
}
[[ $EUID -eq 0 ]] || cannot "needs root (network namespaces)"
for tool in ip unshare nsenter mpirun mpicc timeout; do
  command -v "$tool" >/dev/null 2>&1 || cannot "$tool not found"
done
[[ -x $BIN ]] || cannot "$BIN not found (build it with make, or set GIVT_BIN)"
"$BIN" --version 2>/dev/null | grep -q 'data parallel: MPI' || cannot "$BIN was built without MPI"

TMP=$(mktemp -d /tmp/givt-multinode.XXXXXX)
# the ranks' shared memory (Open MPI's vader files): ours, since a killed host leaves its files behind
SHM=$(mktemp -d /dev/shm/givt-multinode.XXXXXX 2>/dev/null || mktemp -d "$TMP/shm.XXXXXX")
UTS1=$TMP/uts-h1 UTS2=$TMP/uts-h2
JOB=""
cleanup() {
  local ns pids
  [[ -n $JOB ]] && kill -KILL "$JOB" 2>/dev/null
  for ns in "$NS1" "$NS2"; do  # every process started in a host: ours
    [[ -e /run/netns/$ns ]] || continue
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [[ -n $pids ]] && kill -KILL $pids 2>/dev/null
  done
  for ns in "$NS1" "$NS2"; do
    for _ in $(seq 50); do [[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && break; sleep 0.1; done
    ip netns del "$ns" 2>/dev/null  # takes its end of the veth with it
  done
  umount "$UTS1" "$UTS2" 2>/dev/null
  rm -rf "$TMP" "$SHM"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ---- the two hosts ----------------------------------------------------------------------------
ip netns add "$NS1" 2>"$TMP/err" && ip netns add "$NS2" 2>>"$TMP/err" &&
  ip link add "$VETH1" netns "$NS1" type veth peer name "$VETH2" netns "$NS2" 2>>"$TMP/err" ||
  cannot "cannot create network namespaces: $(head -c 300 "$TMP/err")"
ip -n "$NS1" addr add "$IP1/24" dev "$VETH1" && ip -n "$NS2" addr add "$IP2/24" dev "$VETH2" &&
  ip -n "$NS1" link set lo up && ip -n "$NS2" link set lo up &&
  ip -n "$NS1" link set "$VETH1" up && ip -n "$NS2" link set "$VETH2" up || cannot "cannot set up the veth"
touch "$UTS1" "$UTS2"
unshare --uts="$UTS1" hostname h1 && unshare --uts="$UTS2" hostname h2 || cannot "cannot create UTS namespaces"
in_h1=(nsenter --net="/run/netns/$NS1" --uts="$UTS1")

# Open MPI's remote agent ("ssh HOST COMMAND"): runs the command in that host's namespaces
cat >"$TMP/agent" <<EOF
#!/bin/sh
while [ \$# -gt 0 ]; do case "\$1" in -*) shift ;; *) break ;; esac; done  # ssh options, if any
host=\$1
shift
case "\$host" in
  h1 | $IP1) exec $(command -v nsenter) --net=/run/netns/$NS1 --uts=$UTS1 sh -c "\$*" ;;
  h2 | $IP2) exec $(command -v nsenter) --net=/run/netns/$NS2 --uts=$UTS2 sh -c "\$*" ;;
  *) echo "agent: no host \$host" >&2; exit 255 ;;
esac
EOF
chmod +x "$TMP/agent"
printf 'h1 slots=2\nh2 slots=2\n' >"$TMP/hosts"
env_args=(-x PATH -x OMP_NUM_THREADS)
[[ -n ${LD_LIBRARY_PATH:-} ]] && env_args+=(-x LD_LIBRARY_PATH)
# mpirun in h1, 4 ranks from the hostfile (ranks 0,1 on h1, 2,3 on h2); ob1 + TCP between the hosts
# on the veth subnet only; ranks yield when idle (4 busy-polling ranks on 2 cores are 10x slower);
# Open MPI's session folders and shared-memory files in ours, which a killed host cannot clean up
# shellcheck disable=SC2054  # "self,vader,tcp" is one word
mpirun_4=("${in_h1[@]}" mpirun --allow-run-as-root -np 4 --hostfile "$TMP/hosts"
  --mca plm_rsh_agent "$TMP/agent" --mca oob_tcp_if_include "$NET" --mca btl_tcp_if_include "$NET"
  --mca pml ob1 --mca btl self,vader,tcp --mca mpi_yield_when_idle 1 "${env_args[@]}"
  --mca orte_tmpdir_base "$TMP/ompi" --mca btl_vader_backing_directory "$SHM")
veth_bytes() { ip -n "$NS2" -s link show dev "$VETH2" | awk '/RX:/ { getline; print $1; exit }'; }
t_start=$(now)
echo "check_multinode: hosts h1 ($IP1) and h2 ($IP2) on $NET; $BIN; in $TMP"

# ---- 1. local ranks per host ------------------------------------------------------------------
cat >"$TMP/ranks.c" <<'EOF'
// The rank layout as dist_mpi.c computes it: hostname, rank, local rank (MPI_COMM_TYPE_SHARED).
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int rank, size, local, total = 0, one = 1;
    char host[256] = "";
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local);
    MPI_Allreduce(&one, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    gethostname(host, sizeof host - 1);
    printf("rank %d of %d on %s: local rank %d, allreduce %d\n", rank, size, host, local, total);
    MPI_Comm_free(&node);
    MPI_Finalize();
    return 0;
}
EOF
cat >"$TMP/compare.c" <<'EOF'
// compare A.safetensors B.safetensors A.jsonl B.jsonl: the largest ||a - b|| / ||b|| over the F32
// tensors (per tensor norm: AdamW turns rounding near 0 into up to lr per element, see
// scripts/check_dist.py) and over the logged losses; "PASS ..." when both are within 1e-5.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static char *slurp(const char *path, long *n) {
    FILE *f = fopen(path, "rb");
    if (!f || fseek(f, 0, SEEK_END) != 0 || (*n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) return NULL;
    char *b = calloc(1, *n + 1);
    if (fread(b, 1, *n, f) != (size_t)*n) b = NULL;
    fclose(f);
    return b;
}
static int losses(const char *path, double *l, int max) {
    long n;
    char *t = slurp(path, &n);
    int k = 0;
    for (char *p = t; p && k < max && (p = strstr(p, "\"loss\": ")); p += 8) l[k++] = strtod(p + 8, NULL);
    return k;
}
int main(int argc, char **argv) {
    long na, nb;
    char *a = argc == 5 ? slurp(argv[1], &na) : NULL, *b = argc == 5 ? slurp(argv[2], &nb) : NULL;
    if (!a || !b || na < 8 || nb < 8) return printf("FAIL cannot read the checkpoints\n"), 1;
    uint64_t ha, hb;
    memcpy(&ha, a, 8), memcpy(&hb, b, 8);
    if (ha != hb || 8 + ha > (uint64_t)na || memcmp(a + 8, b + 8, ha) != 0 || na != nb)
        return printf("FAIL the safetensors headers differ\n"), 1;
    int same = memcmp(a, b, na) == 0;
    a[8 + ha - 1] = '\0';  // the header's closing brace: end the string there
    double worst = 0;
    int count = 0;
    char worst_name[200] = "none";
    for (char *p = a + 8; (p = strstr(p, "\":{\"dtype\":\"")); count++) {
        char *q = p;
        while (q > a + 8 && q[-1] != '"') q--;
        int name_len = (int)(p - q);
        if (strncmp(p + 12, "F32\"", 4) != 0 || !(p = strstr(p, "\"data_offsets\":[")))
            return printf("FAIL not an F32 tensor: %.*s\n", name_len, q), 1;
        long lo = strtol(p + 16, &p, 10), hi = strtol(p + 1, &p, 10);
        if (lo < 0 || hi < lo || 8 + (long)ha + hi > na) return printf("FAIL bad offsets\n"), 1;
        double dd = 0, yy = 0;
        for (long i = lo; i < hi; i += 4) {
            float x, y;
            memcpy(&x, a + 8 + ha + i, 4), memcpy(&y, b + 8 + ha + i, 4);
            dd += ((double)x - y) * ((double)x - y), yy += (double)y * y;
        }
        double rel = sqrt(dd) / fmax(sqrt(yy), 1e-30);
        if (!(rel <= worst)) worst = rel, snprintf(worst_name, sizeof worst_name, "%.*s", name_len, q);
    }
    double la[1000], lb[1000], lw = 0;
    int n = losses(argv[3], la, 1000);
    if (n == 0 || losses(argv[4], lb, 1000) != n) return printf("FAIL the logged losses differ in number\n"), 1;
    for (int i = 0; i < n; i++) {
        double r = fabs(la[i] - lb[i]) / fmax(fabs(lb[i]), 1e-30);
        if (!(r <= lw)) lw = r;
    }
    int ok = count > 0 && worst <= 1e-5 && lw <= 1e-5;
    printf("%s %d tensors ", ok ? "PASS" : "FAIL", count);
    if (same) printf("byte-identical");
    else printf("within %.2g (worst: %s)", worst, worst_name);
    printf(", %d losses within %.2g\n", n, lw);
    return !ok;
}
EOF
t0=$(now)
if ! mpicc -O1 -o "$TMP/ranks" "$TMP/ranks.c" 2>"$TMP/mpicc.log"; then
  fail "1. local ranks: mpicc failed: $(head -c 500 "$TMP/mpicc.log")"
else
  timeout -s KILL 60 "${mpirun_4[@]}" "$TMP/ranks" >"$TMP/ranks.log" 2>&1
  rc=$?
  sort "$TMP/ranks.log" | grep '^rank ' | sed 's/^/  /'
  want=$'rank 0 of 4 on h1: local rank 0, allreduce 4\nrank 1 of 4 on h1: local rank 1, allreduce 4
rank 2 of 4 on h2: local rank 0, allreduce 4\nrank 3 of 4 on h2: local rank 1, allreduce 4'
  if [[ $rc -eq 0 && $(grep '^rank ' "$TMP/ranks.log" | sort) == "$want" ]]; then
    pass "1. local ranks: h1 runs ranks 0,1 as local 0,1 and h2 runs ranks 2,3 as local 0,1 ($(since "$t0") s)"
  else
    fail "1. local ranks (exit status $rc): $(tail -c 1500 "$TMP/ranks.log")"
  fi
fi

# ---- 2. 4 ranks over TCP = one process with the same global batch -------------------------------
t0=$(now)
steps=8
common=("train.max_steps=$steps" "train.save_every=$steps" train.log_every=1 train.val_every=4)
timeout -s KILL 120 "$BIN" "$CFG" train.out_dir="$TMP/one" train.batch_size=16 "${common[@]}" >"$TMP/one.log" 2>&1
rc1=$?
bytes0=$(veth_bytes)
timeout -s KILL 120 "${mpirun_4[@]}" "$BIN" "$CFG" train.out_dir="$TMP/four" "${common[@]}" >"$TMP/four.log" 2>&1
rc4=$?
bytes=$(($(veth_bytes) - bytes0))
ckpt=$(printf 'step_%08d' $steps)
if [[ $rc1 -ne 0 || $rc4 -ne 0 ]]; then
  fail "2. equal weights: a run failed (one process: $rc1, 4 ranks: $rc4): $(tail -c 1500 "$TMP/one.log") $(tail -c 1500 "$TMP/four.log")"
elif ! grep -q 'global batch 16 sequences = batch_size 4 x grad_accum_steps 1 x 4 ranks' "$TMP/four.log"; then
  fail "2. equal weights: the 4-rank job did not say 4 ranks: $(head -c 1500 "$TMP/four.log")"
else
  if ! mpicc -O1 -o "$TMP/compare" "$TMP/compare.c" -lm 2>"$TMP/compare.log"; then
    verdict="FAIL compare.c did not build: $(head -c 500 "$TMP/compare.log")"
  else
    verdict=$("$TMP/compare" "$TMP/four/$ckpt/model.safetensors" "$TMP/one/$ckpt/model.safetensors" \
      "$TMP/four/metrics.jsonl" "$TMP/one/metrics.jsonl" 2>&1)
  fi
  what="2. 4 ranks over TCP ($bytes bytes through h2's veth) vs one process, global batch 16, $steps steps: ${verdict#* } ($(since "$t0") s)"
  [[ $verdict == PASS* && $bytes -gt 0 ]] && pass "$what" || fail "$what"
fi

# ---- 3. host h2 killed: the job ends, the checkpoints stay ---------------------------------------
t0=$(now)
out=$TMP/killed
"${mpirun_4[@]}" "$BIN" "$CFG" train.out_dir="$out" train.max_steps=100000000 train.save_every=1 \
  train.keep_checkpoints=0 train.log_every=1 train.val_every=0 >"$TMP/killed.log" 2>&1 &
JOB=$!
for _ in $(seq 600); do  # up to 60 s for the third checkpoint
  [[ -d $out/step_00000003 ]] || ! kill -0 $JOB 2>/dev/null && break
  sleep 0.1
done
if [[ ! -d $out/step_00000003 ]]; then
  fail "3. host killed: no checkpoint within 60 s: $(tail -c 1500 "$TMP/killed.log")"
else
  newest=$(cd "$out" && ls -d step_* | sort | tail -1)
  cp -a "$out/$newest" "$TMP/snapshot"
  # what runs in h2: Open MPI's daemon and givt-train ranks 2 and 3 (Open MPI's local ranks 0 and 1)
  h2_pids=$(ip netns pids "$NS2")
  layout=""
  for p in $h2_pids; do
    [[ $(readlink "/proc/$p/exe" 2>/dev/null) == "$BIN" ]] || continue
    layout+=" $(tr '\0' '\n' <"/proc/$p/environ" | awk -F= '$1 == "OMPI_COMM_WORLD_RANK" { r = $2 }
      $1 == "OMPI_COMM_WORLD_LOCAL_RANK" { l = $2 } END { printf "rank %s (local %s)", r, l }')"
  done
  kill -KILL $h2_pids 2>/dev/null
  t_kill=$(now)
  rc=timeout
  for _ in $(seq 1200); do  # up to 120 s for mpirun to end
    if ! kill -0 $JOB 2>/dev/null; then wait $JOB; rc=$?; break; fi
    sleep 0.05
  done
  took=$(since "$t_kill")
  [[ $rc == timeout ]] || JOB=""
  left=""
  for _ in $(seq 100); do  # and for every process of both hosts to be gone (10 s)
    left=$(ip netns pids "$NS1"; ip netns pids "$NS2")
    [[ -z $left ]] && break
    sleep 0.1
  done
  said=$(grep -m1 -iE 'lost communication|noticed that|exited on signal|unexpectedly disconnected|aborted' "$TMP/killed.log" | sed -E 's/\.  .*/./' | head -c 200)
  # the checkpoints: the one copied before the kill unchanged, every folder complete, newest resumes
  last=$(cd "$out" && ls -d step_* | sort | tail -1)
  last_step=$((10#${last#step_}))
  incomplete=""
  for d in "$out"/step_*; do
    for f in config.json model.safetensors optimizer.safetensors train.ini; do
      [[ -s $d/$f ]] || incomplete+=" ${d##*/}/$f"
    done
  done
  timeout -s KILL 60 "$BIN" "$CFG" train.out_dir="$TMP/resumed" train.resume_from_ckpt="$out/$last" \
    train.batch_size=16 train.max_steps=$((last_step + 1)) train.val_every=0 >"$TMP/resumed.log" 2>&1
  rc_resume=$?
  what="3. SIGKILL to h2's$layout and its daemon ($(wc -w <<<"$h2_pids") processes) after $newest: the job ended $took s later (exit status $rc"
  what+="${said:+; mpirun: \"$said\"}); $(ls -d "$out"/step_* | wc -l) checkpoints, $newest unchanged, $last resumed by one process"
  if [[ $rc == timeout ]] || ! awk -v t="$took" 'BEGIN { exit !(t < 60) }'; then
    fail "$what: the job did not end within 60 s"
  elif [[ $rc -eq 0 ]]; then
    fail "$what: exit status 0 after a host was killed"
  elif [[ -n $left ]]; then
    fail "$what: processes left: $left"
  elif [[ $layout != " rank 2 (local 0) rank 3 (local 1)" && $layout != " rank 3 (local 1) rank 2 (local 0)" ]]; then
    fail "$what: h2 did not run givt-train ranks 2 and 3"
  elif ! diff -r "$TMP/snapshot" "$out/$newest" >/dev/null; then
    fail "$what: $newest changed after the kill"
  elif [[ -n $incomplete ]]; then
    fail "$what: incomplete:$incomplete"
  elif [[ $rc_resume -ne 0 || ! -d $TMP/resumed/$(printf 'step_%08d' $((last_step + 1))) ]]; then
    fail "$what: the resume failed ($rc_resume): $(tail -c 1500 "$TMP/resumed.log")"
  else
    pass "$what ($(since "$t0") s)"
  fi
fi

echo "check_multinode: $(since "$t_start") s"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
