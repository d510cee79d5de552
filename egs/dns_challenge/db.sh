# shellcheck shell=bash
# Corpus location for this recipe (sourced by run.sh; --dns-root overrides it).
# DNS_ROOT: the folder that holds datasets_fullband/ of the DNS Challenge 5 fullband data
# (clean_fullband/<subset>/, noise_fullband/, impulse_responses/; optional test sets below it).
# Empty: stage 0 downloads the chosen --subsets into downloads/dns5.
# e.g.: export DNS_ROOT=/corpora/dns5   (in the environment or here)
DNS_ROOT=${DNS_ROOT:-}
