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
. "$SE_ROOT/steps/lib/stages.sh"  # (and common.sh)
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
need_conf "$conf"
fs=$(network_fs "$network")
data=data/$((fs / 1000))k   # the network's rate: 16k or 48k (conf/ reads its source dirs there)
[ -n "$tag" ] || tag=$network
exp=$expdir/$tag
corpus=${dns_root:-$download_dir}
case " $rates " in *" $fs "*) ;; *) stop "--rates '$rates' lacks $fs Hz, the rate of $network" ;; esac

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
    need_done data/.stage0.done "$corpus_sig" "$corpus is not verified; run stage 0 first"
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
    need_done data/.stage1.done "$data_sig" "the source dirs are not prepared; run stage 1 first"
    # held-out speakers (clean_<set>), noises and RIRs
    simulate_sets "$conf" "$data" clean dns_ "$num_valid" "$num_test" "$sim_length" "$fs"
    python "$SE_ROOT/local/prepare_dns.py" test-sets "$corpus" --out-dir data --dump-dir "$dumpdir" \
      --rates "$fs" --nj "$nj" | tail -n 1 | tr ' ' '\n' | sed '/^$/d' > "$data/official_test_sets"
    log "test sets: $(test_sets | xargs)"
    mark_done "$data/.stage2.done" "$sets_sig"
  fi
fi

if in_stages 3; then
  log "Stage 3: train $network in $exp on data simulated on the fly ($conf)"
  need_done "$data/.stage2.done" "$sets_sig" "$data/valid_sim is not made; run stage 2 first"
  train_stage "$exp" "$conf" "$sets_sig" "$train_args" "$init" --cmd "$train_cmd" --ngpu "$ngpu" \
    --num-nodes "$num_nodes" --valid-data "$data/valid_sim"
fi

if in_stages 4; then
  log "Stage 4: enhance the test sets with the best checkpoint of $exp"
  need_model "$exp"
  need_done "$data/.stage2.done" "$sets_sig" "the test sets are not made; run stage 2 first"
  for set in $(test_sets); do
    enhance_set "$exp" "$data/$set" "$sets_sig" --cmd "$decode_cmd" --nj "$nj"
  done
fi

if in_stages 5; then
  log "Stage 5: score noisy and enhanced audio of every test set; write $exp/RESULTS.md"
  for set in $(test_sets); do
    if [ -f "$data/$set/spk1.scp" ]; then
      ref=$data/$set/spk1.scp m=$metrics
    else
      ref=- m=$noref_metrics  # real recordings: no clean reference
    fi
    score_set "$exp" "$data/$set" "$ref" "$m" "$sets_sig" --cmd "$score_cmd" --nj "$nj" --fs "$fs"
  done
  write_results "$exp" "$run_cmdline"
fi

success
