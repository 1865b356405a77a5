#!/usr/bin/env bash
# Shared body of the pipeline drivers, sourced by run_pipeline_*.sh.
#
# Bash only fans out, times, logs and passes exit codes: the plan (selection, skipping,
# sharding, run folder, SLURM script), each episode's steps and the summary are Python
# (droid_pipeline.execution.runner). Fan-out: GNU xargs -P feeds the run's todo.jsonl, a few episode lines
# per worker process; --process-slot-var gives each worker its slot, which pins its GPU. xargs
# runs in its own session, so Ctrl-C reaches only this script, which then stops the workers with
# SIGTERM, waits for them (each holds a shared lock on the run folder's .workers.lock), writes
# the summary and exits 130.

DRIVER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly DRIVER_ROOT

PY=""
PLAN_FILE=""
FANOUT_PID=""
PROGRESS_PID=""
UPLOADER_PID=""
INTERRUPTED=0
declare -A PLAN=()

err() {
  echo "$(date -u +%FT%TZ) $(basename "$0"): $*" >&2
}

info() {
  echo "$(date -u +%FT%TZ) $(basename "$0"): $*"
}

# The interpreter: $DROID_PYTHON, else the checkout's .venv, else python3; the checkout's
# package comes first on its path.
find_python() {
  if [[ -n "${DROID_PYTHON:-}" ]]; then
    PY="${DROID_PYTHON}"
  elif [[ -x "${DRIVER_ROOT}/.venv/bin/python" ]]; then
    PY="${DRIVER_ROOT}/.venv/bin/python"
  else
    PY="python3"
  fi
  export PYTHONPATH="${DRIVER_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
}

cleanup() {
  local pid
  for pid in "${PROGRESS_PID}" "${UPLOADER_PID}"; do
    if [[ -n "${pid}" ]]; then
      kill -TERM "${pid}" 2>/dev/null || true
    fi
  done
  if [[ -n "${FANOUT_PID}" ]]; then
    kill -TERM -- "-${FANOUT_PID}" 2>/dev/null || true
  fi
  if [[ -n "${PLAN_FILE}" ]]; then
    rm -f -- "${PLAN_FILE}"
  fi
}

on_signal() {
  INTERRUPTED=1
  err "interrupted: stopping the workers (their episodes are discarded, not published)"
  if [[ -n "${FANOUT_PID}" ]]; then
    kill -TERM -- "-${FANOUT_PID}" 2>/dev/null || true
  fi
}

read_plan() {
  local key value
  while IFS='=' read -r key value; do
    PLAN["${key}"]="${value}"
  done <"${PLAN_FILE}"
}

start_uploader() {
  local log="${PLAN[run_dir]}/uploader.log"
  local cmd=("${PY}" "${DRIVER_ROOT}/upload_batches.py" --daemon
    --config "${PLAN[run_dir]}/config.yaml" --run-root "${PLAN[run_root]}")
  "${cmd[@]}" >>"${log}" 2>&1 &
  UPLOADER_PID=$!
  info "uploader started in the background (pid ${UPLOADER_PID}, log ${log})"
}

# Stop the background uploader; after a complete run, give it a final flush.
finish_uploader() {
  local rc=0
  if [[ -n "${UPLOADER_PID}" ]]; then
    kill -TERM "${UPLOADER_PID}" 2>/dev/null || true
    wait "${UPLOADER_PID}" || rc=$?
    UPLOADER_PID=""
    if ((rc != 0 && rc != 143)); then
      err "background uploader exited with ${rc} (see ${PLAN[run_dir]}/uploader.log)"
    fi
  fi
  if ((INTERRUPTED)); then
    info "no final upload flush after an interrupt: a rerun uploads what is published"
    return 0
  fi
  local log="${PLAN[run_dir]}/uploader.log"
  info "final upload flush (log ${log})"
  rc=0
  local cmd=("${PY}" "${DRIVER_ROOT}/upload_batches.py" --once
    --config "${PLAN[run_dir]}/config.yaml" --run-root "${PLAN[run_root]}")
  "${cmd[@]}" >>"${log}" 2>&1 || rc=$?
  case "${rc}" in
    0) info "upload complete" ;;
    3) info "some uploads carried over (rate limit or budget): upload_batches.py --once later" ;;
    *)
      err "final upload flush failed with ${rc} (see ${log}); a rerun retries it"
      return 1
      ;;
  esac
}

start_progress() {
  "${PY}" -m droid_pipeline.execution.progress --run-dir "${PLAN[run_dir]}" \
    --todo "${PLAN[todo_file]}" &
  PROGRESS_PID=$!
}

stop_progress() {
  if [[ -n "${PROGRESS_PID}" ]]; then
    kill -TERM "${PROGRESS_PID}" 2>/dev/null || true
    wait "${PROGRESS_PID}" || true
    PROGRESS_PID=""
  fi
}

# Workers take PLAN[batch] episode lines each, PLAN[workers] at a time, each told its slot.
run_fanout() {
  local cmd=(setsid xargs --arg-file="${PLAN[todo_file]}" --delimiter='\n' --max-args="${PLAN[batch]}"
    --max-procs="${PLAN[workers]}" --process-slot-var=DROID_WORKER_SLOT --
    "${PY}" -m droid_pipeline.execution.runner worker --run-dir "${PLAN[run_dir]}" --gpus "${PLAN[gpus]}")
  local started="${SECONDS}"
  "${cmd[@]}" &
  FANOUT_PID=$!
  local rc=0
  while kill -0 "${FANOUT_PID}" 2>/dev/null; do
    rc=0
    wait "${FANOUT_PID}" || rc=$?
  done
  FANOUT_PID=""
  # Workers outlive a killed xargs for a moment: wait until none holds the run's lock.
  flock "${PLAN[run_dir]}/.workers.lock" true
  info "fan-out ended after $((SECONDS - started)) s"
  # xargs: 0 all done, 123 some episode failed (recorded), 124/125 stopped by a worker.
  if ((rc != 0 && rc != 123 && !INTERRUPTED)); then
    err "fan-out stopped early (xargs exit ${rc}): see the episode logs in ${PLAN[run_dir]}/logs"
  fi
}

# driver_main PIPELINE ARGS...: the whole driver (see the drivers' --help).
driver_main() {
  local pipeline="$1"
  shift
  find_python
  PLAN_FILE="$(mktemp)"
  trap cleanup EXIT
  "${PY}" -m droid_pipeline.execution.runner plan --pipeline "${pipeline}" --plan-file "${PLAN_FILE}" "$@"
  read_plan
  if [[ "${PLAN[action]:-exit}" != "run" ]]; then
    return "${PLAN[exit_code]:-0}"
  fi
  trap on_signal INT TERM
  if ((PLAN[upload])); then
    start_uploader
  fi
  if ((PLAN[todo] > 0 && !INTERRUPTED)); then
    if ((!PLAN[debug])); then
      start_progress
    fi
    run_fanout
    stop_progress
  fi
  local summary=("${PY}" -m droid_pipeline.execution.runner summary --run-dir "${PLAN[run_dir]}")
  if [[ -n "${PLAN[summary_task]}" ]]; then
    summary+=(--task "${PLAN[summary_task]}")
  fi
  if ((INTERRUPTED)); then
    summary+=(--interrupted)
  fi
  local rc=0
  "${summary[@]}" || rc=$?
  if ((PLAN[upload])); then
    finish_uploader || rc=$((rc == 0 ? 1 : rc))
  fi
  return "${rc}"
}
