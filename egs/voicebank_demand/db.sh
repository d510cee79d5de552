# shellcheck shell=bash
# Corpus location for this recipe (sourced by run.sh; --vbd-root overrides it).
# VBD_ROOT: an unpacked VoiceBank-DEMAND 28-speaker copy, i.e. the folder that holds
# clean_trainset_28spk_wav/ noisy_trainset_28spk_wav/ clean_testset_wav/ noisy_testset_wav/.
# Empty: stage 0 downloads the corpus into downloads/VoiceBank-DEMAND.
# e.g.: export VBD_ROOT=/corpora/VoiceBank-DEMAND   (in the environment or here)
VBD_ROOT=${VBD_ROOT:-}
