#!/bin/sh
# Makes the test clips from sentences.json: espeak-ng (Debian package espeak-ng)
# speaks each sentence at its own 22050 Hz, sox (Debian package sox) converts it
# to 16 kHz mono PCM16. -D turns sox's dither off, so the output is the same on
# every run of the same tool versions. Needs python3 only to read the JSON.
# The shipped clips were made by "eSpeak NG text-to-speech: 1.51" and "SoX v14.4.2"
# (their --version lines; Debian bookworm packages).
# Run from anywhere: sh tests/data/audio/make_clips.sh
set -eu
cd "$(dirname "$0")"
python3 -c 'import json; [print(k, v) for k, v in json.load(open("sentences.json")).items()]' |
while read -r clip text; do
    espeak-ng -v en-us -s 150 -w "raw_$clip" "$text"
    sox -D "raw_$clip" -r 16000 -c 1 -b 16 "$clip"
    rm "raw_$clip"
done
