#!/usr/bin/env bash
# Download subsets of the DNS Challenge 5 (ICASSP 2023) fullband training data and unpack them into
# <download-dir>/datasets_fullband/ (the layout local/prepare_dns.py and --dns-root expect).
# The archive list is in local/prepare_dns.py (`urls`). Resumable: each archive downloads into
# NAME.part with wget -c (or curl -C -) and is renamed when complete; a subset is unpacked only
# after all its archives are there, and its files are moved into place only when the whole
# (split) archive decompressed with correct checksums (local/prepare_dns.py unpack). Finished
# subsets leave <download-dir>/.done.<subset>. Sizes (archived ~550 GB for everything; unpacked):
# read_speech 299G, german_speech 319G, spanish_speech 65G, french_speech 62G, italian_speech 42G,
# vctk_wav48_silence_trimmed 27G, russian_speech 12G, emotional_speech 2.4G,
# VocalSet_48kHz_mono 974M, noise_fullband 58G (~39 GB archived), impulse_responses 5.9G.
set -euo pipefail

# subsets to fetch (see local/prepare_dns.py --help for all names)
subsets="read_speech noise_fullband impulse_responses"
# where the DNS 5 blobs are
base_url=https://dnschallengepublic.blob.core.windows.net/dns5archive/V5_training_dataset
# print the archives that would be fetched (URL and target file), download nothing
list_only=false
# delete the archives of a subset once it is unpacked
remove_archives=false

echo "$0 $*"
help_message="Usage: $0 [options] <download-dir>
Downloads the archives of --subsets into <download-dir>/archives/ and unpacks them into
<download-dir>/datasets_fullband/.
e.g.: $0 --subsets \"read_speech noise_fullband impulse_responses\" downloads/dns5"
SE_ROOT=${SE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
. "$SE_ROOT/steps/parse_options.sh"
. "$SE_ROOT/steps/lib/fetch.sh"  # (and common.sh)

check_args 1 $#
dir=$1
prepare=$SE_ROOT/local/prepare_dns.py


# the archive list: "<url> <subset>" lines (also checks the subset names)
urls=$(python "$prepare" urls --subsets "$subsets" --base-url "$base_url")

if $list_only; then
  while read -r url subset; do
    echo "$subset $url $dir/archives/$(basename "$url")"
  done <<< "$urls"
  exit 0
fi

# manual URL: the download of URL failed; say what to fetch by hand, then stop.
manual() {
  cat >&2 <<END
$0: could not download $1 (no network access?).
Fetch the archives listed by
  $0 --list-only true --subsets "$subsets" $dir
into $dir/archives/ by hand and run this again (they are verified, then unpacked), or unpack the
DNS 5 data anywhere and give the recipe --dns-root <the folder holding datasets_fullband/>.
END
  exit 1
}

mkdir -p "$dir/archives"
for subset in $(awk '{print $2}' <<< "$urls" | uniq); do
  if [ -f "$dir/.done.$subset" ]; then
    log "$subset is unpacked already ($dir/.done.$subset), skipping"
    continue
  fi
  archives=()
  while read -r url s; do
    [ "$s" = "$subset" ] || continue
    file=$dir/archives/$(basename "$url")
    fetch_once "$url" "$file" || manual "$url"
    archives+=("$file")
  done <<< "$urls"
  python "$prepare" unpack --subset "$subset" "$dir" "${archives[@]}"
  touch "$dir/.done.$subset"
  if $remove_archives; then
    rm -f "${archives[@]}"
  fi
done
python "$prepare" check-layout --subsets "$subsets" "$dir"
log "DNS 5 subsets $subsets are complete in $dir/datasets_fullband"
success
