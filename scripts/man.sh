#!/bin/sh
# scripts/man.sh CLIPC OUT — clipc(1), assembled from the binary's own --help texts (so the
# page cannot drift from the commands): the overview, then every command's usage verbatim.
set -eu
CLIPC=$1
OUT=$2
COMMANDS="init info tokenize preprocess embed classify caption train finetune wise eval retrieve index search export serve export-images pull models convert"
{
  printf '%s\n' '.TH CLIPC 1 "" "clipc 0.1.0" "User Commands"'
  printf '%s\n' '.SH NAME'
  printf '%s\n' 'clipc \- CLIP, SigLIP and CoCa in C: embed, classify, caption, search, train, fine-tune'
  printf '%s\n' '.SH SYNOPSIS'
  printf '%s\n' '.B clipc'
  printf '%s\n' '.I COMMAND'
  printf '%s\n' '[\fIOPTIONS\fR]'
  printf '%s\n' '.SH DESCRIPTION'
  printf '%s\n' 'One command-line tool over libclipc. Every command prints its usage with \fB\-\-help\fR;'
  printf '%s\n' 'on any error it prints one line \fBclipc: error: ...\fR and exits with status 1.'
  printf '%s\n' '.PP'
  printf '%s\n' '.nf'
  "$CLIPC" --help | sed -e 's/\\/\\e/g' -e 's/^\./\\\&./' -e "s/^'/\\\\\&'/" -e 's/—/\\(em/g'
  printf '%s\n' '.fi'
  printf '%s\n' '.SH COMMANDS'
  for c in $COMMANDS; do
    echo ".SS $c"
    printf '%s\n' '.nf'
    "$CLIPC" "$c" --help 2>&1 | sed -e 's/\\/\\e/g' -e 's/^\./\\\&./' -e "s/^'/\\\\\&'/" -e 's/—/\\(em/g'
    printf '%s\n' '.fi'
  done
  printf '%s\n' '.SH ENVIRONMENT'
  printf '%s\n' '.TP'
  printf '%s\n' '.B CLIPC_MODEL, CLIPC_CAPTION_MODEL'
  printf '%s\n' 'the model used when \fB\-m\fR is left out (default: the shipped Fashion-MNIST CLIP and CoCa in PREFIX/share/clipc)'
  printf '%s\n' '.TP'
  printf '%s\n' '.B CLIPC_PRECISION'
  printf '%s\n' 'fp32, bf16 or int8 for the commands that encode'
  printf '%s\n' '.TP'
  printf '%s\n' '.B CLIPC_CACHE, XDG_CACHE_HOME'
  printf '%s\n' 'where \fBclipc pull\fR keeps checkpoints (default ~/.cache/clipc)'
  printf '%s\n' '.TP'
  printf '%s\n' '.B CLIPC_FASHION_MNIST_DIR'
  printf '%s\n' 'the Fashion-MNIST files (default /usr/share/datasets/fashion-mnist)'
  printf '%s\n' '.SH EXIT STATUS'
  printf '%s\n' '0 on success, 1 on an error (one line on stderr), 2 for a missing command, 130 when interrupted'
  printf '%s\n' '(train and finetune save their partial work first).'
  printf '%s\n' '.SH SEE ALSO'
  printf '%s\n' 'The README of the clipc sources, and include/clipc.h for the library.'
} > "$OUT"
