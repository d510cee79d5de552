# shellcheck shell=bash
# Command-line options for the script that sources this file (after Kaldi's utils/parse_options.sh).
#
# Declare every option as a top-level shell variable with its default, each with a one-line comment
# above it (or after the value), then source this file; "$@" keeps the positional arguments:
#
#   # number of parallel jobs
#   nj=4
#   overwrite=false  # recompute existing outputs
#   help_message="Usage: $0 [options] <data-dir>"   # optional, printed by --help
#   . steps/parse_options.sh
#
# --foo-bar VALUE and --foo-bar=VALUE set foo_bar; an option whose default is true or false takes
# only true or false, one whose default is an integer (e.g. stage=0) only an integer, one whose
# default is another number (e.g. alpha=0.5) only a number. Options come before the positional arguments; "--" ends them. --help (-h)
# prints help_message and the options with their defaults and comments, then exits 0; the other
# options on that command line are checked first (names and values), so `script --help OPTIONS`
# is a dry run of the option parsing (tests/test_docs_commands.py runs documented commands so).
# --config FILE reads name=value lines of declared options before the command line is applied
# (the command line wins), unless the script declares its own `config` option.
# An unknown option, a missing value or a value of the wrong kind prints a message naming the
# option and exits 1.
# The options are the `name=...` lines (lower-case names) of the calling script above the line
# that sources this file.

_po_script=${BASH_SOURCE[1]:-$0}
# The script may have changed directory since it started (recipes cd to their own dir), so its
# relative path may be stale: bash keeps the script it runs open on fd 255.
if [ "$_po_script" = "$0" ] && _po_fd=$(readlink "/proc/$$/fd/255" 2>/dev/null) \
    && [ "${_po_fd##*/}" = "${0##*/}" ]; then
  _po_script=$_po_fd
fi
if [ ! -r "$_po_script" ]; then
  echo "$0: parse_options.sh cannot read the calling script '$_po_script' to find its options" >&2
  exit 1
fi

# The declared options: names, defaults (the values now) and comments.
_po_names=()
_po_defaults=()
_po_comments=()
declare -A _po_declared=()   # set of the option names
_po_above=""   # the comment line just above, if any
while IFS= read -r _po_line || [ -n "$_po_line" ]; do
  if [[ $_po_line =~ ^[[:space:]]*(\.|source)[[:space:]].*parse_options\.sh ]]; then
    break
  fi
  if [[ $_po_line =~ ^([a-z_][a-z0-9_]*)=(.*)$ ]] && [ "${BASH_REMATCH[1]}" != help_message ]; then
    _po_name=${BASH_REMATCH[1]}
    _po_comment=$_po_above
    if [[ ${BASH_REMATCH[2]} =~ [[:space:]]#[[:space:]]*(.*)$ ]]; then
      _po_comment=${BASH_REMATCH[1]}
    fi
    if [ -z "${_po_declared[$_po_name]+set}" ]; then
      _po_declared[$_po_name]=1
      _po_names+=("$_po_name")
      _po_defaults+=("${!_po_name-}")
      _po_comments+=("$_po_comment")
    fi
    _po_above=""
  elif [[ $_po_line =~ ^#[[:space:]]*(.*)$ ]] && [[ $_po_line != '#!'* ]]; then
    _po_above=${BASH_REMATCH[1]}
  else
    _po_above=""
  fi
done <"$_po_script"

_po_print_help() {
  local i value width=0 lefts=() comments=()
  if [ -n "${help_message:-}" ]; then
    printf '%s\n\n' "$help_message"
  fi
  for i in "${!_po_names[@]}"; do
    value=${_po_defaults[i]}
    if [ -z "$value" ] || [[ $value =~ [[:space:]] ]]; then value="'$value'"; fi
    lefts+=("--${_po_names[i]//_/-} $value")
    comments+=("${_po_comments[i]:-(no comment)}")
  done
  if [ -z "${_po_declared[config]+set}" ]; then
    lefts+=("--config FILE")
    comments+=("read name=value option lines from FILE first")
  fi
  for i in "${!lefts[@]}"; do
    if [ ${#lefts[i]} -gt "$width" ]; then width=${#lefts[i]}; fi
  done
  echo "Options (with their defaults):"
  for i in "${!lefts[@]}"; do
    printf "  %-${width}s  # %s\n" "${lefts[i]}" "${comments[i]}"
  done
}

# _po_read_config FILE: check that FILE sets only declared options, then source it.
_po_read_config() {
  local line
  if [ ! -r "$1" ]; then
    echo "$0: cannot read config file '$1'" >&2
    exit 1
  fi
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ $line =~ ^[[:space:]]*(#.*)?$ ]]; then continue; fi
    if [[ ! $line =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)= ]]; then
      echo "$0: config file '$1': expected name=value, got: $line" >&2
      exit 1
    fi
    if [ -z "${_po_declared[${BASH_REMATCH[1]}]+set}" ]; then
      echo "$0: config file '$1': unknown option '${BASH_REMATCH[1]}' (see $0 --help)" >&2
      exit 1
    fi
  done <"$1"
  # shellcheck disable=SC1090
  . "$1"
}

# Collect the options first, so that config files are read before the command line is applied.
_po_opts=()
_po_values=()
_po_configs=()
_po_help=false
while [ $# -gt 0 ]; do
  case $1 in
    --) shift; break ;;
    --help|-h) _po_help=true; shift; continue ;;
    --*=*) _po_opt=${1%%=*}; _po_value=${1#*=}; shift ;;
    --?*)
      if [ $# -lt 2 ]; then
        echo "$0: option $1 needs a value (see $0 --help)" >&2
        exit 1
      fi
      _po_opt=$1; _po_value=$2; shift 2 ;;
    *) break ;;
  esac
  if [ "$_po_opt" = --config ] && [ -z "${_po_declared[config]+set}" ]; then
    _po_configs+=("$_po_value")
  else
    _po_opts+=("$_po_opt")
    _po_values+=("$_po_value")
  fi
done

for _po_value in "${_po_configs[@]}"; do
  _po_read_config "$_po_value"
done
for _po_i in "${!_po_opts[@]}"; do
  _po_name=${_po_opts[_po_i]#--}
  _po_name=${_po_name//-/_}
  if [ -z "$_po_name" ] || [ -z "${_po_declared[$_po_name]+set}" ]; then
    echo "$0: unknown option ${_po_opts[_po_i]} (see $0 --help)" >&2
    exit 1
  fi
  printf -v "$_po_name" '%s' "${_po_values[_po_i]}"
done

# Options declared true or false stay true or false; options declared with an integer (a number)
# take only an integer (a number), so that e.g. `--stage one` is an error, not a run of no stage.
_po_int='^-?[0-9]+$'
_po_num='^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$'
for _po_i in "${!_po_names[@]}"; do
  _po_name=${_po_names[_po_i]}
  _po_value=${!_po_name}
  if [[ ${_po_defaults[_po_i]} == true || ${_po_defaults[_po_i]} == false ]]; then
    if [[ $_po_value != true && $_po_value != false ]]; then
      echo "$0: option --${_po_name//_/-} takes true or false, not '$_po_value'" >&2
      exit 1
    fi
  elif [[ ${_po_defaults[_po_i]} =~ $_po_int ]]; then
    if [[ ! $_po_value =~ $_po_int ]]; then
      echo "$0: option --${_po_name//_/-} takes an integer, not '$_po_value'" >&2
      exit 1
    fi
  elif [[ ${_po_defaults[_po_i]} =~ $_po_num ]]; then
    if [[ ! $_po_value =~ $_po_num ]]; then
      echo "$0: option --${_po_name//_/-} takes a number, not '$_po_value'" >&2
      exit 1
    fi
  fi
done

if $_po_help; then
  _po_print_help
  exit 0
fi

unset -f _po_print_help _po_read_config
unset _po_int _po_num _po_script _po_fd _po_names _po_defaults _po_comments _po_declared _po_above _po_line _po_name \
  _po_comment _po_opts _po_values _po_configs _po_opt _po_value _po_i _po_help
true
