#!/usr/bin/env bash
# Small stand-in for Kaldi's utils/parse_options.sh (which is not shipped with the ESPnet wheel).
# Source it after setting defaults: every variable `foo_bar` with a default becomes the option
# `--foo_bar VALUE` (or `--foo-bar VALUE`); `--help` prints the script's usage block ($help_message).
# Positional arguments are left in "$@".
__po_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      echo "${help_message:-No help for $0}"; exit 0 ;;
    --*=*)
      __po_name=${1%%=*}; __po_value=${1#*=}; shift ;;
    --*)
      __po_name=$1
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
      __po_value=$2; shift 2 ;;
    *)
      __po_args+=("$1"); shift; continue ;;
  esac
  __po_var=${__po_name#--}; __po_var=${__po_var//-/_}
  if ! declare -p "$__po_var" >/dev/null 2>&1; then
    echo "$0: unknown option $__po_name (try --help)" >&2; exit 1
  fi
  __po_old=${!__po_var}
  if [ "$__po_old" = true ] || [ "$__po_old" = false ]; then
    case "$__po_value" in true|false) ;; *) echo "$0: $__po_name takes true or false, got '$__po_value'" >&2; exit 1 ;; esac
  fi
  printf -v "$__po_var" '%s' "$__po_value"
done
set -- "${__po_args[@]+"${__po_args[@]}"}"
unset __po_args __po_name __po_value __po_var __po_old
