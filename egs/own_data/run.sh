#!/usr/bin/env bash
# Train or fine-tune a network on YOUR clean speech and noise: point it at a folder of clean speech
# and a folder of noise (optionally room impulse responses), at any sample rate; training mixes
# them on the fly with reverberation and channel effects (se/simulation.py). See README.md.
#   e.g.: ./run.sh --speech-dir /data/my_speech --noise-dir /data/my_noise             # FRCRN_SE_16K
#         ./run.sh --speech-dir S --noise-dir N --init FRCRN_SE_16K.pt --tag frcrn_ft   # fine-tune a release
#         ./run.sh --speech-dir S --noise-dir N --rir-dir /data/rirs --network MossFormer2_SE_48K --ngpu 1
# Stages: 1 source dirs at the network's rate (each file resampled once; train/valid/test split by
# speaker with --utt2spk-regex, else by file; simulated RIRs when no --rir-dir), 2 fixed simulated
# valid/test sets (se.bin.simulate), 3 train with on-the-fly simulation, 4 enhance the test set,
# 5 score it into <expdir>/<tag>/RESULTS.md. Finished stages leave .done markers holding their
# inputs and are skipped when run again with the same inputs.
set -euo pipefail

# shellcheck disable=SC1091
. "$(dirname "$0")/../../path.sh"
. "$SE_ROOT/steps/lib/stages.sh"  # (and common.sh)

stage=1                 # first stage to run
stop_stage=5            # last stage to run
speech_dir=             # folder of clean speech (.wav/.flac, searched recursively, any rate)
noise_dir=              # folder of noise recordings (.wav/.flac, any rate)
rir_dir=                # folder of room impulse responses (channel 0 of multi-channel files); empty: simulated rooms
utt2spk_regex=          # speaker in a speech file's relative path (group 1), e.g. "^([^/]+)/"; empty: split by file
network=FRCRN_SE_16K    # FRCRN_SE_16K or MossFormerGAN_SE_16K (16 kHz), MossFormer2_SE_48K (48 kHz)
valid_fraction=0.05     # share of speakers (or files) and of noises / RIRs held out for validation
test_fraction=0.05      # ... and for the test set
num_rirs=200            # simulated RIRs without --rir-dir (split into train/valid/test like a RIR folder)
num_valid=100           # utterances of the fixed simulated validation set
num_test=100            # utterances of the fixed simulated test set
sim_length=4            # seconds per simulated valid/test utterance (0: whole speech files)
dumpdir=dump            # resampled copies of your files (stage 1)
expdir=exp              # experiments: <expdir>/<tag>
nj=4                    # parallel jobs for resampling, enhancement and scoring
ngpu=0                  # GPUs per node for training (0 = CPU)
num_nodes=1             # nodes for training (more than 1 needs cmd_backend=slurm)
init=                   # fine-tune from this checkpoint (a ClearVoice release file or one of ours)
tag=                    # experiment name; default <network>
train_args=             # more se.bin.train options (shell quoting), e.g. "--max-epoch 20 --batch-size 8"
metrics=all             # scoring metrics (se.bin.score --metrics)

train_cmd=              # job runner of the training jobs; empty: cmd.sh's (cmd_backend=local|slurm)
decode_cmd=             # job runner of the enhancement jobs; empty: cmd.sh's
score_cmd=              # job runner of the scoring jobs; empty: cmd.sh's
printf -v run_cmdline '%q ' "$0" "$@"
help_message="Usage: $0 --speech-dir DIR --noise-dir DIR [options]
e.g.: $0 --speech-dir /data/my_speech --noise-dir /data/my_noise --init FRCRN_SE_16K.pt"
. "$SE_ROOT/steps/parse_options.sh"
job_runners

# folders given relative to where the command ran
abspath() { [ -z "$1" ] || (cd "$1" 2>/dev/null && pwd) || { log "$1: folder not found" >&2; return 1; }; }
speech_dir=$(abspath "$speech_dir")
noise_dir=$(abspath "$noise_dir")
rir_dir=$(abspath "$rir_dir")
cd "$(dirname "$0")"

conf=conf/train_${network}.yaml
need_conf "$conf"
fs=$(network_fs "$network")
data=data               # source dirs and fixed sets at $fs Hz (conf/ reads data/{speech,noise,rir}_train)
[ -n "$tag" ] || tag=$network
exp=$expdir/$tag

data_sig="fs=$fs speech=$speech_dir noise=$noise_dir rir=$rir_dir spk=$utt2spk_regex valid=$valid_fraction test=$test_fraction rirs=$num_rirs"
sets_sig="$data_sig valid=$num_valid test=$num_test length=$sim_length conf=$(cksum < "$conf")"

if in_stages 1; then
  log "Stage 1: speech/noise/RIR source dirs in $data at $fs Hz"
  if stage_done "$data/.stage1.done" "$data_sig"; then
    log "the source dirs are prepared already, skipping ($data/.stage1.done)"
  else
    if [ -z "$speech_dir" ] || [ -z "$noise_dir" ]; then
      stop "give --speech-dir and --noise-dir (folders of .wav/.flac files)"
    fi
    split=(--holdout "$valid_fraction" "$test_fraction" --fs "$fs" --nj "$nj")
    spk=()
    [ -z "$utt2spk_regex" ] || spk=(--utt2spk-regex "$utt2spk_regex")
    python -m se.bin.make_source_dir --audio-dir "$speech_dir" --out "$data/speech" "${split[@]}" "${spk[@]}" \
      --resample-dir "$dumpdir/$fs/speech"
    python -m se.bin.make_source_dir --audio-dir "$noise_dir" --out "$data/noise" "${split[@]}" \
      --resample-dir "$dumpdir/$fs/noise"
    if [ -n "$rir_dir" ]; then
      python -m se.bin.make_source_dir --audio-dir "$rir_dir" --out "$data/rir" "${split[@]}" --first-channel \
        --resample-dir "$dumpdir/$fs/rir"
    else
      # simulated rooms, split by file like a RIR folder
      python "$SE_ROOT/local/simulate_rirs.py" --fs "$fs" --num "$num_rirs" --seed 0 --out-dir "$dumpdir/$fs/rir_sim"
      python -m se.bin.make_source_dir --audio-dir "$dumpdir/$fs/rir_sim/wav" --out "$data/rir" "${split[@]}"
    fi
    mark_done "$data/.stage1.done" "$data_sig"
  fi
fi

if in_stages 2; then
  log "Stage 2: fixed simulated valid/test sets in $data"
  if stage_done "$data/.stage2.done" "$sets_sig"; then
    log "the valid/test sets are made already, skipping ($data/.stage2.done)"
  else
    need_done "$data/.stage1.done" "$data_sig" "the source dirs are not prepared; run stage 1 first"
    simulate_sets "$conf" "$data" speech "" "$num_valid" "$num_test" "$sim_length" "$fs"
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
  log "Stage 4: enhance $data/test_sim with the best checkpoint of $exp"
  need_model "$exp"
  need_done "$data/.stage2.done" "$sets_sig" "$data/test_sim is not made; run stage 2 first"
  enhance_set "$exp" "$data/test_sim" "$sets_sig" --cmd "$decode_cmd" --nj "$nj"
fi

if in_stages 5; then
  log "Stage 5: score the noisy and enhanced test audio at $fs Hz; write $exp/RESULTS.md"
  score_set "$exp" "$data/test_sim" "$data/test_sim/spk1.scp" "$metrics" "$sets_sig" \
    --cmd "$score_cmd" --nj "$nj" --fs "$fs"
  write_results "$exp" "$run_cmdline"
fi

success
