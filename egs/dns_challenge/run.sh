#!/usr/bin/env bash
# DNS Challenge 5 (ICASSP 2023) fullband data, trained on degradations simulated on the fly:
# clean speech + noise + room impulse responses + channel effects (se/simulation.py), the way the
# released ClearVoice networks were trained (DNS-scale data, about 30 % reverberant). See README.md.
#   e.g.: ./run.sh --dns-root /corpora/dns5                      # FRCRN_SE_16K, stages 1-5
#         ./run.sh --subsets "read_speech noise_fullband impulse_responses"   # download them first
#         ./run.sh --dns-root /corpora/dns5 --network MossFormer2_SE_48K --ngpu 4
#         ./run.sh --dns-root /corpora/dns5 --init FRCRN_SE_16K.pt --tag FRCRN_SE_16K_ft  # fine-tune
# Stages: 0 download the chosen subsets (or verify --dns-root), 1 clean/noise/RIR source dirs at
# 16 and 48 kHz (speaker-disjoint train/valid/test), 2 fixed simulated valid/test sets
# (se.bin.simulate) + the official DNS synthetic/dev test sets when present, 3 train with
# on-the-fly simulation, 4 enhance every test set, 5 score (DNSMOS/PLCMOS only for sets without a
# clean reference) into <expdir>/<tag>/RESULTS.md. Finished stages leave .done markers holding
# their inputs and are skipped when run again with the same inputs.
set -euo pipefail

# shellcheck disable=SC1091
. "$(dirname "$0")/../../path.sh"
. "$SE_ROOT/steps/lib/common.sh"
# shellcheck source=SCRIPTDIR/db.sh
. "$(dirname "$0")/db.sh"

stage=0                 # first stage to run
stop_stage=5            # last stage to run
network=FRCRN_SE_16K    # FRCRN_SE_16K or MossFormerGAN_SE_16K (16 kHz), MossFormer2_SE_48K (48 kHz)
dns_root=${DNS_ROOT:-}  # a copy holding datasets_fullband/ (default from db.sh); empty: stage 0 downloads
download_dir=downloads/dns5  # where stage 0 downloads and unpacks the subsets
subsets="read_speech noise_fullband impulse_responses"  # DNS 5 subsets to use (local/prepare_dns.py --help)
rates="16000 48000"     # sample rates of the source dirs (each resampled once, in stage 1)
valid_fraction=0.02     # share of speakers (clean) and of files (noise, RIRs) held out for validation
test_fraction=0.02      # ... and for the simulated test set
speaker_regex=          # speaker patterns per subset, e.g. "german_speech=spk_(\d+)" (space separated)
num_rirs=500            # simulated RIRs (pyroomacoustics, split like the corpus RIRs) when impulse_responses is not used
num_valid=200           # utterances of the fixed simulated validation set
num_test=200            # utterances of the fixed simulated test set
sim_length=4            # seconds per simulated valid/test utterance (0: whole speech files)
dumpdir=dump            # resampled copies of the corpus (stage 1)
expdir=exp              # experiments: <expdir>/<tag>
nj=4                    # parallel jobs for resampling, enhancement and scoring
ngpu=0                  # GPUs per node for training (0 = CPU)
num_nodes=1             # nodes for training (more than 1 needs cmd_backend=slurm)
init=                   # fine-tune from this checkpoint (a ClearVoice release file or one of ours)
tag=                    # experiment name; default <network>
train_args=             # more se.bin.train options (shell quoting), e.g. "--max-epoch 20 --batch-size 8"
metrics=all             # metrics for test sets with clean references (se.bin.score --metrics)
noref_metrics=noref     # metrics for test sets without them (DNSMOS and PLCMOS)

train_cmd=              # job runner of the training jobs; empty: cmd.sh's (cmd_backend=local|slurm)
decode_cmd=             # job runner of the enhancement jobs; empty: cmd.sh's
score_cmd=              # job runner of the scoring jobs; empty: cmd.sh's
printf -v run_cmdline '%q ' "$0" "$@"
help_message="Usage: $0 [options]
e.g.: $0 --dns-root /corpora/dns5 --network FRCRN_SE_16K --ngpu 1"
. "$SE_ROOT/steps/parse_options.sh"
job_runners
cd "$(dirname "$0")"

conf=conf/train_${network}.yaml
if [ ! -f "$conf" ]; then
  log "no $conf: networks with a config are $(cd conf && printf '%s ' train_*.yaml | sed 's/train_\([^ ]*\)\.yaml/\1/g')"
  exit 1
fi
fs=$(python -c "from se.models import network_sampling_rate as r; print(r('$network'))")
data=data/$((fs / 1000))k   # the network's rate: 16k or 48k (conf/ reads its source dirs there)
[ -n "$tag" ] || tag=$network
exp=$expdir/$tag
corpus=${dns_root:-$download_dir}
case " $rates " in *" $fs "*) ;; *) log "--rates '$rates' lacks $fs Hz, the rate of $network"; exit 1 ;; esac

corpus_sig="corpus=$corpus subsets=$subsets"
data_sig="$corpus_sig rates=$rates valid=$valid_fraction test=$test_fraction speakers=$speaker_regex rirs=$num_rirs"
sets_sig="$data_sig valid=$num_valid test=$num_test length=$sim_length conf=$(cksum < "$conf")"
# the test sets of stage 2: the simulated one and the official ones found in the corpus
test_sets() { echo test_sim; [ ! -f "$data/official_test_sets" ] || cat "$data/official_test_sets"; }

if in_stages 0; then
  log "Stage 0: get and verify the DNS 5 subsets ($subsets) in $corpus"
  if stage_done data/.stage0.done "$corpus_sig"; then
    log "$corpus was verified already, skipping (data/.stage0.done)"
  else
    if [ -n "$dns_root" ]; then
      python "$SE_ROOT/local/prepare_dns.py" check-layout --subsets "$subsets" "$dns_root"
    else
      "$SE_ROOT/local/download_dns5.sh" --subsets "$subsets" "$download_dir"
    fi
    mark_done data/.stage0.done "$corpus_sig"
  fi
fi

if in_stages 1; then
  log "Stage 1: clean/noise/RIR source dirs in data/<rate>/ at $rates Hz"
  if stage_done data/.stage1.done "$data_sig"; then
    log "the source dirs are prepared already, skipping (data/.stage1.done)"
  else
    stage_done data/.stage0.done "$corpus_sig" || { log "$corpus is not verified; run stage 0 first"; exit 1; }
    regex_opts=()
    for r in $speaker_regex; do regex_opts+=(--speaker-regex "$r"); done
    python "$SE_ROOT/local/prepare_dns.py" prepare "$corpus" --out-dir data --dump-dir "$dumpdir" \
      --subsets "$subsets" --rates "$rates" --valid-fraction "$valid_fraction" --test-fraction "$test_fraction" \
      "${regex_opts[@]}" --nj "$nj"
    case " $subsets " in
      *" impulse_responses "*) ;;
      *)  # no RIR corpus: simulated rooms (the same rooms at every rate), split by file
        for rate in $rates; do
          python "$SE_ROOT/local/simulate_rirs.py" --fs "$rate" --num "$num_rirs" --seed 0 \
            --out-dir "$dumpdir/$((rate / 1000))k/rir_sim"
          python -m se.bin.make_source_dir --audio-dir "$dumpdir/$((rate / 1000))k/rir_sim/wav" --fs "$rate" \
            --out "data/$((rate / 1000))k/rir" --holdout "$valid_fraction" "$test_fraction"
        done ;;
    esac
    mark_done data/.stage1.done "$data_sig"
  fi
fi

if in_stages 2; then
  log "Stage 2: fixed simulated valid/test sets and the official test sets in $data"
  if stage_done "$data/.stage2.done" "$sets_sig"; then
    log "the valid/test sets are made already, skipping ($data/.stage2.done)"
  else
    stage_done data/.stage1.done "$data_sig" || { log "the source dirs are not prepared; run stage 1 first"; exit 1; }
    seed=1
    for set in valid test; do
      if [ $set = valid ]; then num=$num_valid; else num=$num_test; fi
      # the training block's SNRs, reverberation and effects; held-out speakers, noises and RIRs
      python -m se.bin.simulate --config "$conf" --seed $seed --num "$num" --length "$sim_length" \
        --out-dir "$data/${set}_sim" --speech "$data/clean_$set" --noise "$data/noise_$set" \
        --rir "$data/rir_$set" --prefix "dns_${set}_sim" --overwrite
      seed=$((seed + 1))
    done
    python -m se.bin.validate_data_dir "$data/valid_sim" "$data/test_sim" --fs "$fs"
    python "$SE_ROOT/local/prepare_dns.py" test-sets "$corpus" --out-dir data --dump-dir "$dumpdir" \
      --rates "$fs" --nj "$nj" | tail -n 1 | tr ' ' '\n' | sed '/^$/d' > "$data/official_test_sets"
    log "test sets: $(test_sets | xargs)"
    mark_done "$data/.stage2.done" "$sets_sig"
  fi
fi

if in_stages 3; then
  log "Stage 3: train $network in $exp on data simulated on the fly ($conf)"
  stage_done "$data/.stage2.done" "$sets_sig" || { log "$data/valid_sim is not made; run stage 2 first"; exit 1; }
  eval "extra=($train_args)"  # quotes in --train-args group words, as on a command line
  [ -z "$init" ] || extra=(--init "$init" "${extra[@]}")
  train_sig="$(cksum < "$conf") ${extra[*]} $sets_sig"
  if stage_done "$exp/.stage3.done" "$train_sig"; then
    log "$exp is trained already with these settings, skipping ($exp/.stage3.done)"
  else
    rm -f "$exp/.stage3.done"
    "$SE_ROOT/steps/train.sh" --cmd "$train_cmd" --ngpu "$ngpu" --num-nodes "$num_nodes" --config "$conf" \
      --valid-data "$data/valid_sim" --exp-dir "$exp" -- "${extra[@]}"
    mark_done "$exp/.stage3.done" "$train_sig"
  fi
fi

if in_stages 4; then
  log "Stage 4: enhance the test sets with the best checkpoint of $exp"
  [ -f "$exp/last_best_checkpoint" ] || { log "$exp has no trained model; run stage 3 first"; exit 1; }
  stage_done "$data/.stage2.done" "$sets_sig" || { log "the test sets are not made; run stage 2 first"; exit 1; }
  for set in $(test_sets); do
    enhance_sig="$(checkpoint_sig "$exp") $sets_sig"
    if stage_done "$exp/enhanced/$set/.done" "$enhance_sig"; then
      log "$exp/enhanced/$set is up to date, skipping"
      continue
    fi
    rm -f "$exp/enhanced/$set/.done"
    "$SE_ROOT/steps/enhance.sh" --cmd "$decode_cmd" --nj "$nj" "$exp" "$data/$set" "$exp/enhanced/$set"
    mark_done "$exp/enhanced/$set/.done" "$enhance_sig"
  done
fi

if in_stages 5; then
  log "Stage 5: score noisy and enhanced audio of every test set; write $exp/RESULTS.md"
  for set in $(test_sets); do
    [ -f "$exp/enhanced/$set/.done" ] || { log "no enhanced audio in $exp/enhanced/$set; run stage 4 first"; exit 1; }
    if [ -f "$data/$set/spk1.scp" ]; then
      ref=$data/$set/spk1.scp m=${metrics// /,}
    else
      ref=- m=${noref_metrics// /,}  # real recordings: no clean reference
    fi
    for kind in noisy enhanced; do
      if [ $kind = noisy ]; then
        est=$data/$set/wav.scp score_sig="metrics=$m $sets_sig"
      else
        est=$exp/enhanced/$set/wav.scp score_sig="metrics=$m $(cat "$exp/enhanced/$set/.done")"
      fi
      if stage_done "$exp/scores/$set/$kind/.done" "$score_sig"; then
        log "$exp/scores/$set/$kind is up to date, skipping"
        continue
      fi
      rm -f "$exp/scores/$set/$kind/.done"
      "$SE_ROOT/steps/score.sh" --cmd "$score_cmd" --nj "$nj" --fs "$fs" --metrics "$m" \
        "$ref" "$est" "$exp/scores/$set/$kind"
      mark_done "$exp/scores/$set/$kind/.done" "$score_sig"
    done
  done
  python -m se.bin.make_results --exp-dir "$exp" --scores-root "$exp/scores" --cmd "${run_cmdline% }"
  cat "$exp/RESULTS.md"
fi

success
