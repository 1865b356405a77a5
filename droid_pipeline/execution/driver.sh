#!/usr/bin/env bash
# The pipeline driver: bash driver.sh metadata|full [OPTIONS...] (options: --help).
#
# Package data, so it runs the same from a checkout (run_pipeline_*.sh exec it), from an installed
# package (the droid-run-metadata / droid-run-full console scripts exec it with DROID_PYTHON set to
# their interpreter) and in SLURM array tasks (the sbatch script execs it).
#
# Bash only fans out, times, logs and passes exit codes: the plan (selection, skipping,
# sharding, run folder, SLURM script), each episode's steps and the summary are Python
# (droid_pipeline.execution.runner). Fan-out: GNU xargs -P feeds the run's todo.jsonl, a few episode lines
# per worker process; --process-slot-var gives each worker its slot, which pins its GPU. xargs
# runs in its own session, so Ctrl-C reaches only this script, which then stops the workers with
# SIGTERM, waits for them (each holds a shared lock on the run folder's .workers.lock), writes
# the summary and exits with the summary's code (interrupted). Exit codes come from the one table,
# droid_pipeline.core.exit_codes, read into EXIT by load_exit_codes.
set -euo pipefail

# The folder holding the droid_pipeline package: a checkout's root, or site-packages.
PACKAGE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly PACKAGE_ROOT

PROG="droid-run"
PY=""
PLAN_FILE=""
FANOUT_PID=""
PROGRESS_PID=""
UPLOADER_PID=""
INTERRUPTED=0
declare -A PLAN=()
declare -A EXIT=()
# GNU xargs exits 123 when a command (a worker) exited 1-125.
readonly XARGS_COMMAND_FAILED=123

err() {
  echo "$(date -u +%FT%TZ) ${PROG}: $*" >&2
}

info() {
  echo "$(date -u +%FT%TZ) ${PROG}: $*"
}

# True when the package is a source checkout (run from it, not installed).
in_checkout() {
  [[ -f "${PACKAGE_ROOT}/pyproject.toml" ]]
}

# The interpreter: $DROID_PYTHON, else the checkout's .venv, else python3. A checkout's package
# comes first on the path, so the driver runs the code beside it.
find_python() {
  if [[ -n "${DROID_PYTHON:-}" ]]; then
    PY="${DROID_PYTHON}"
  elif in_checkout && [[ -x "${PACKAGE_ROOT}/.venv/bin/python" ]]; then
    PY="${PACKAGE_ROOT}/.venv/bin/python"
  else
    PY="python3"
  fi
  if in_checkout; then
    export PYTHONPATH="${PACKAGE_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
  fi
}

# Fill EXIT (name -> code, e.g. EXIT[usage]) from the package's exit-code table.
load_exit_codes() {
  local table key value
  table="$("${PY}" -m droid_pipeline.core.exit_codes)"
  while IFS='=' read -r key value; do
    EXIT["${key}"]="${value}"
  done <<<"${table}"
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
  local cmd=("${PY}" -m droid_pipeline.upload --daemon
    --config "${PLAN[run_dir]}/config.yaml" --run-root "${PLAN[run_root]}")
  "${cmd[@]}" >>"${log}" 2>&1 &
  UPLOADER_PID=$!
  info "uploader started in the background (pid ${UPLOADER_PID}, log ${log})"
}

# Stop the background uploader; after a complete run, give it a final flush.
finish_uploader() {
  local rc="${EXIT[done]}"
  if [[ -n "${UPLOADER_PID}" ]]; then
    kill -TERM "${UPLOADER_PID}" 2>/dev/null || true
    wait "${UPLOADER_PID}" || rc=$?
    UPLOADER_PID=""
    if ((rc != EXIT[done] && rc != EXIT[terminated])); then
      err "background uploader exited with ${rc} (see ${PLAN[run_dir]}/uploader.log)"
    fi
  fi
  if ((INTERRUPTED)); then
    info "no final upload flush after an interrupt: a rerun uploads what is published"
    return "${EXIT[done]}"
  fi
  local log="${PLAN[run_dir]}/uploader.log"
  info "final upload flush (log ${log})"
  rc="${EXIT[done]}"
  local cmd=("${PY}" -m droid_pipeline.upload --once
    --config "${PLAN[run_dir]}/config.yaml" --run-root "${PLAN[run_root]}")
  "${cmd[@]}" >>"${log}" 2>&1 || rc=$?
  if ((rc == EXIT[done])); then
    info "upload complete"
  elif ((rc == EXIT[carried_over])); then
    info "some uploads carried over (rate limit or budget): python -m droid_pipeline.upload --once later"
  else
    err "final upload flush failed with ${rc} (see ${log}); a rerun retries it"
    return "${EXIT[failed]}"
  fi
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
  local rc="${EXIT[done]}"
  while kill -0 "${FANOUT_PID}" 2>/dev/null; do
    rc="${EXIT[done]}"
    wait "${FANOUT_PID}" || rc=$?
  done
  FANOUT_PID=""
  # Workers outlive a killed xargs for a moment: wait until none holds the run's lock.
  flock "${PLAN[run_dir]}/.workers.lock" true
  info "fan-out ended after $((SECONDS - started)) s"
  # xargs: done, a worker failed (its episodes recorded), or stopped or killed by a worker.
  if ((rc != EXIT[done] && rc != XARGS_COMMAND_FAILED && !INTERRUPTED)); then
    err "fan-out stopped early (xargs exit ${rc}): see the episode logs in ${PLAN[run_dir]}/logs"
  fi
}

# main PIPELINE ARGS...: plan, fan out, summarize, upload; exits with the summary's code.
main() {
  find_python
  load_exit_codes
  if [[ $# -lt 1 || ( "$1" != "metadata" && "$1" != "full" ) ]]; then
    err "usage: bash driver.sh metadata|full [OPTIONS...] (--help lists the options)"
    return "${EXIT[usage]}"
  fi
  local pipeline="$1"
  shift
  PROG="droid-run-${pipeline}"
  trap cleanup EXIT
  PLAN_FILE="$(mktemp)"
  "${PY}" -m droid_pipeline.execution.runner plan --pipeline "${pipeline}" --plan-file "${PLAN_FILE}" "$@"
  read_plan
  if [[ "${PLAN[action]:-exit}" != "run" ]]; then
    return "${PLAN[exit_code]:-${EXIT[done]}}"
  fi
  trap on_signal INT TERM
  if ((PLAN[upload])); then
    start_uploader
  fi
  if ((PLAN[todo] > 0 && !INTERRUPTED)); then
    # The progress line is drawn on a terminal only: elsewhere its process would cost CPU for nothing.
    if ((!PLAN[debug])) && [[ -t 2 ]]; then
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
  local rc="${EXIT[done]}"
  "${summary[@]}" || rc=$?
  if ((PLAN[upload])); then
    finish_uploader || rc=$((rc == EXIT[done] ? EXIT[failed] : rc))
  fi
  return "${rc}"
}

# Run when executed; sourcing it (as the tests do) only defines the functions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
