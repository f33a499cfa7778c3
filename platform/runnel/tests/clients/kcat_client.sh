#!/usr/bin/env bash
# kcat (Debian's, on librdkafka 2.0.2) against a Runnel node, end to end.
#
# Environment: RUNNEL_BOOTSTRAP (host:port of the Kafka listener), RUNNEL_TOPIC (a topic that
# already exists with 3 partitions: kcat has no admin API, so the test creates it through the
# HTTP admin API and deletes it afterwards), and optionally KCAT (the binary; default: kcat
# on PATH).
#
# Steps: check that Metadata shows the topic with 3 partitions, each with a leader; produce
# with every codec (none, gzip, snappy, lz4, zstd) keyed, unkeyed and null values, with
# headers on some runs, each run to one explicit partition (kcat cannot say where the
# partitioner put a message); consume every partition from the beginning to its end (-C -e,
# no group); compare what came back with what was sent, as multisets per partition and in
# order per key; ListOffsets for earliest (-2), latest (-1) and by timestamp. kcat cannot set
# a record's timestamp, so timestamps are checked against the time of the run.
#
# Exit 0 when everything matched. Otherwise one line on stderr, "kcat: <step>: <what
# differed>", and exit 1. kcat's own log lines may come before it.
set -euo pipefail

bootstrap=${RUNNEL_BOOTSTRAP:?RUNNEL_BOOTSTRAP is not set}
topic=${RUNNEL_TOPIC:?RUNNEL_TOPIC is not set}
kcat=${KCAT:-kcat}
partitions=3
codecs=(none gzip snappy lz4 zstd)
tab=$'\t'

current_step=start
step() {
  current_step=$1
  echo "== $1"
}
fail() {
  echo "kcat: $current_step: $*" >&2
  exit 1
}
trap 'fail "command failed (exit $?): $BASH_COMMAND"' ERR

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# kcat with a deadline, so a broker that never answers fails the run instead of hanging it.
run_kcat() {
  timeout 30 "$kcat" -b "$bootstrap" "$@"
}

step "metadata shows $partitions partitions"
shows_all_partitions() {
  run_kcat -L -m 5 -t "$topic" >"$work/metadata" 2>&1 || return 1
  grep -q "topic \"$topic\" with $partitions partitions" "$work/metadata" \
    && [ "$(grep -c 'partition [0-9]*, leader [0-9]' "$work/metadata")" -eq "$partitions" ]
}
deadline=$((SECONDS + 15))
until shows_all_partitions; do
  [ "$SECONDS" -lt "$deadline" ] || fail "not within 15 s: $(tr '\n' ' ' <"$work/metadata")"
  sleep 0.2
done

# Each expected record is one line: partition, key length (-1 for null), key, value length
# (-1 for null), value, headers as kcat prints them (name=value,...). Lines are written in
# the order sent.
expect() {
  local partition=$1 key=$2 value=$3 headers=$4
  local key_length=${#key} value_length=${#value}
  [ "$key" != "-" ] || { key=""; key_length=-1; }
  [ -n "$value" ] || value_length=-1
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$partition" "$key_length" "$key" "$value_length" "$value" "$headers" >>"$work/expected"
}

started_ms=$(($(date +%s%N) / 1000000))
for codec_index in "${!codecs[@]}"; do
  codec=${codecs[$codec_index]}
  step "produce with compression $codec"
  for partition in $(seq 0 $((partitions - 1))); do
    header_args=() headers=""
    if [ $(((codec_index + partition) % 2)) -eq 0 ]; then
      header_args=(-H "codec=$codec" -H "partition=$partition")
      headers="codec=$codec,partition=$partition"
    fi
    : >"$work/input"
    for i in 0 1 2; do
      value="kcat $codec p$partition m$i$(printf ' runnel%.0s' $(seq 40))"
      if [ "$i" -eq 1 ]; then
        key="-" # unkeyed: a line without the key delimiter
        echo "$value" >>"$work/input"
      else
        key="key-$partition"
        echo "$key:$value" >>"$work/input"
      fi
      expect "$partition" "$key" "$value" "$headers"
    done
    if [ "$partition" -eq $((codec_index % partitions)) ]; then
      echo "gone-$codec:" >>"$work/input" # -Z sends the empty value as null
      expect "$partition" "gone-$codec" "" "$headers"
    fi
    run_kcat -P -t "$topic" -p "$partition" -K : -Z -X "compression.codec=$codec" \
      "${header_args[@]}" <"$work/input"
  done
done
finished_ms=$(($(date +%s%N) / 1000000))

step "consume from the beginning"
# One line per record: partition, offset, key length (-1 for null), key, value length (-1 for
# null), value, timestamp, headers; sorted by partition and offset.
consumed=$work/consumed
run_kcat -C -t "$topic" -o beginning -e -q -f '%p\t%o\t%K\t%k\t%S\t%s\t%T\t%h\n' \
  | sort -t "$tab" -k1,1n -k2,2n >"$consumed"

step "compare consumed with sent"
# As multisets: the consumed records without offset and timestamp, against the expected ones.
cut -f1,3-6,8 "$consumed" | sort >"$work/got"
sort "$work/expected" >"$work/want"
if ! cmp -s "$work/want" "$work/got"; then
  # The values' long " runnel runnel ..." tails are shortened. (diff exits 1 on differences
  # and head may cut the pipe short: neither is an error here.)
  differences=$(diff "$work/want" "$work/got" | grep '^[<>]' | head -3 \
    | sed 's/\( runnel\)\{2,\}/ runnel.../' | tr '\n\t' '  ') || true
  fail "records differ (< sent, > consumed): $differences"
fi
gaps=$(awk -F'\t' '$2 != next_offset[$1]++ { print "partition " $1 " offset " $2 }' "$consumed")
[ -z "$gaps" ] || fail "offsets are not 0, 1, 2, ... in every partition: $gaps"
outside=$(awk -F'\t' -v from=$((started_ms - 1000)) -v to=$((finished_ms + 1000)) \
  '$7 < from || $7 > to { print "partition " $1 " offset " $2 " timestamp " $7 }' "$consumed")
[ -z "$outside" ] || fail "timestamps outside the produce run: $outside"
# Each key's values in the order sent and in the order consumed: a stable sort by key keeps
# each key's own order (every key was sent to one partition).
awk -F'\t' '$2 != -1 { print $3 "\t" $5 }' "$work/expected" | sort -s -t "$tab" -k1,1 >"$work/want-order"
awk -F'\t' '$3 != -1 { print $4 "\t" $6 }' "$consumed" | sort -s -t "$tab" -k1,1 >"$work/got-order"
cmp -s "$work/want-order" "$work/got-order" || fail "a key's records came back in another order than sent"

step "list offsets"
# The offset Kafka answers for a timestamp: the first record at or after it, else -1.
first_offset_at_or_after() {
  awk -F'\t' -v p="$1" -v t="$2" '$1 == p && $7 >= t { print $2; found = 1; exit } END { if (!found) print -1 }' \
    "$consumed"
}
tomorrow_ms=$((finished_ms + 86400000))
for partition in $(seq 0 $((partitions - 1))); do
  count=$(awk -F'\t' -v p="$partition" '$1 == p { n++ } END { print n + 0 }' "$consumed")
  middle_ms=$(awk -F'\t' -v p="$partition" -v n=$((count / 2)) '$1 == p && $2 == n { print $7 }' "$consumed")
  queries=(
    "-2 0 earliest"
    "-1 $count latest"
    "$middle_ms $(first_offset_at_or_after "$partition" "$middle_ms") timestamp-$middle_ms"
    "$tomorrow_ms -1 a-timestamp-after-every-record"
  )
  for query in "${queries[@]}"; do
    read -r timestamp wanted name <<<"$query"
    answer=$(run_kcat -Q -t "$topic:$partition:$timestamp")
    got=$(sed -n 's/.* offset \(-\{0,1\}[0-9]*\)$/\1/p' <<<"$answer")
    [ "$got" = "$wanted" ] || fail "partition $partition, $name: offset '$got', expected $wanted"
  done
done

echo "kcat: all checks passed"
