# Downloads for the corpus scripts (local/download_*.sh); sourced:
#   . "$SE_ROOT/steps/lib/fetch.sh"

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
