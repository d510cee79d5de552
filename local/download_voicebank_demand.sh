#!/usr/bin/env bash
# Download VoiceBank-DEMAND (28 speakers) from Edinburgh DataShare (handle 10283/2791) and unpack
# it into <corpus-dir>. Resumable: an interrupted download continues (wget -c, or curl -C -), and
# each archive is unpacked only after its integrity test and wav count pass
# (local/prepare_voicebank_demand.py unpack). Archives already in <corpus-dir> (e.g. copied there
# by hand) are verified and unpacked without downloading. Finished archives leave
# <corpus-dir>/<name>/.done; the whole layout is checked at the end.
set -euo pipefail

# DataShare folder of the four archives
base_url=https://datashare.ed.ac.uk/bitstream/handle/10283/2791
# wav files in each training archive (clean and noisy)
expected_train=11572
# wav files in each test archive (clean and noisy)
expected_test=824
# delete each archive once it is unpacked
remove_zips=false

echo "$0 $*"
help_message="Usage: $0 [options] <corpus-dir>
Downloads clean_trainset_28spk_wav.zip, noisy_trainset_28spk_wav.zip, clean_testset_wav.zip and
noisy_testset_wav.zip into <corpus-dir> and unpacks each into <corpus-dir>/<archive name>/.
e.g.: $0 downloads/VoiceBank-DEMAND"
SE_ROOT=${SE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
. "$SE_ROOT/steps/parse_options.sh"
. "$SE_ROOT/steps/lib/fetch.sh"  # (and common.sh)

check_args 1 $#
dir=$1


# manual NAME: the download of NAME failed; say what to fetch by hand, then stop.
manual() {
  cat >&2 <<END
$0: could not download $1 (no network access?).
Download the four archives by hand from https://datashare.ed.ac.uk/handle/10283/2791 :
  clean_trainset_28spk_wav.zip noisy_trainset_28spk_wav.zip clean_testset_wav.zip noisy_testset_wav.zip
then either copy them into $dir and run this again (they are verified, then unpacked), or unpack
them anywhere and give the recipe --vbd-root <that folder> (or set VBD_ROOT in db.sh).
END
  exit 1
}

mkdir -p "$dir"
for name in clean_trainset_28spk_wav noisy_trainset_28spk_wav clean_testset_wav noisy_testset_wav; do
  case $name in
    *trainset*) expected=$expected_train ;;
    *) expected=$expected_test ;;
  esac
  if [ -f "$dir/$name/.done" ]; then
    log "$dir/$name is unpacked already"
    continue
  fi
  zip=$dir/$name.zip
  fetch_once "$base_url/$name.zip" "$zip" || manual "$name.zip"
  python "$SE_ROOT/local/prepare_voicebank_demand.py" unpack --expected "$expected" "$zip" "$dir"
  touch "$dir/$name/.done"
  if $remove_zips; then
    rm -f "$zip"
  fi
done
python "$SE_ROOT/local/prepare_voicebank_demand.py" check-layout \
  --expected-train "$expected_train" --expected-test "$expected_test" "$dir"
log "VoiceBank-DEMAND is complete in $dir"
success
