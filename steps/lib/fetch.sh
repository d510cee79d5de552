# shellcheck shell=bash
# Downloads for the corpus scripts (local/download_*.sh); sourced after SE_ROOT is set:
#   . "$SE_ROOT/steps/lib/fetch.sh"
# shellcheck disable=SC1091
. "$SE_ROOT/steps/lib/common.sh"

# fetch URL FILE: download URL into FILE, continuing a partial FILE.
fetch() {
  if command -v wget >/dev/null; then
    wget -c --tries 3 -O "$2" "$1"
  elif command -v curl >/dev/null; then
    curl -fL --retry 3 -C - -o "$2" "$1"
  else
    echo "$0: neither wget nor curl is installed" >&2
    return 1
  fi
}

# fetch_once URL FILE: download URL into FILE unless FILE is there; the download goes into FILE.part
# first (continued when run again), so FILE exists only once its download has finished. Status 1
# when the download failed.
fetch_once() {
  [ ! -f "$2" ] || return 0
  log "downloading $1"
  fetch "$1" "$2.part" || return 1
  mv "$2.part" "$2"
}
