#!/usr/bin/env bash
# readme_examples.sh — runs every ```sh example of README.md, top to bottom,
# as a user would after the two set-up commands: in one scratch folder that
# holds links to the built tree (build/, models/, tests/, scripts/, ...), with
# build/ on the PATH so that a bare `clipc` is the built binary.
#
#   tests/readme_examples.sh [README.md] [BUILD_DIR]
#
# Prints one line per example: "ok LINE", "FAIL LINE: the failing command"
# (then its last output lines, indented), or "skip LINE: REASON" for an
# example preceded by a line `<!-- readme-test: skip REASON -->` (the few
# that need the internet, root, a cluster, or are the test command itself)
# or `<!-- readme-test: long REASON -->` (run only with CLIPC_README_LONG=1).
# Examples that serve (`clipc serve ...`) are started, must answer on their
# port, and are stopped. Exit status: the number of failed examples.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
readme=$(realpath "${1:-$root/README.md}")
build=$(realpath "${2:-$root/build}")
scratch=$(mktemp -d "${TMPDIR:-/tmp}/clipc-readme.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/repo"
for entry in "$root"/*; do ln -s "$entry" "$scratch/repo/"; done
rm -f "$scratch/repo/build" && ln -s "$build" "$scratch/repo/build"
[ -e "$root/../shared" ] && ln -s "$(realpath "$root/../shared")" "$scratch/shared"

# The examples' prelude: `clipc serve` runs in the background until it
# answers, then is stopped; Open MPI refuses root unless told (CI runs as root);
# under make sanitize, LeakSanitizer is off for mpirun's processes, whose
# Open MPI allocations are never freed (as the cli suite's mpirun tests do).
cat > "$scratch/prelude.sh" <<'EOF'
export PATH="$PWD/build:$PATH" OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun() { ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" command mpirun "$@"; }
clipc() {
    if [ "${1:-}" != serve ]; then command clipc "$@"; return; fi
    local port=8080 a prev=
    for a in "$@"; do [ "$prev" = --port ] && port=$a; prev=$a; done
    command clipc "$@" & local pid=$!
    for _ in $(seq 100); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$port/"; then kill $pid; wait $pid 2>/dev/null; return 0; fi
        kill -0 $pid 2>/dev/null || break
        sleep 0.2
    done
    kill $pid 2>/dev/null; wait $pid 2>/dev/null
    echo "clipc serve did not answer on port $port" >&2; return 1
}
EOF

failed=0
line=0 start=0 skip= in_block=0 body=
while IFS= read -r text || [ -n "$text" ]; do
    line=$((line + 1))
    if [ $in_block = 0 ]; then
        case $text in
        '<!-- readme-test: skip '*) skip=${text#<!-- readme-test: skip }; skip=${skip% -->} ;;
        '<!-- readme-test: long '*)
            [ "${CLIPC_README_LONG:-0}" = 1 ] || { skip=${text#<!-- readme-test: }; skip="${skip% -->} (CLIPC_README_LONG=1 runs it)"; } ;;
        '```sh') in_block=1 start=$line body= ;;
        '') ;;
        *) skip= ;;
        esac
        continue
    fi
    if [ "$text" != '```' ]; then body+="$text"$'\n'; continue; fi
    in_block=0
    if [ -n "$skip" ]; then echo "skip $start: $skip"; skip=; continue; fi
    # each command of the block in turn (a trailing \ joins lines), so that
    # a failure names the command
    {
        echo "cd '$scratch/repo' && . '$scratch/prelude.sh' || exit 99"
        cmd=
        while IFS= read -r l; do
            cmd+="$l"$'\n'
            case $l in *\\) continue ;; esac
            printf '%s' "$cmd" | grep -qv '^[[:space:]]*\(#.*\)\?$' &&
                printf '%s\nif [ $? != 0 ]; then echo %q >&3; exit 1; fi\n' "$cmd" "$cmd"
            cmd=
        done <<< "$body"
    } > "$scratch/block.sh"
    if bash "$scratch/block.sh" < /dev/null > "$scratch/out.txt" 2>&1 3> "$scratch/failed.txt"; then
        echo "ok $start"
    else
        failed=$((failed + 1))
        echo "FAIL $start: $(tr '\n' ' ' < "$scratch/failed.txt")"
        tail -n 5 "$scratch/out.txt" | sed 's/^/    /'
    fi
done < "$readme"
exit $failed
