#!/bin/bash
# The include graph between the project's folders (docs/engine.md "Layout" and the README):
#   base   → nothing else (plain C++: no LibTorch, no gRPC)
#   engine → base                 tools  → base, engine
#   server → base (and proto's generated slim/)      client → base (and slim/)
#   bench  → base, client
# Edges only point down this list, so there are no cycles. tests/ may include anything.
# Usage: include_rules.sh REPO_ROOT
set -euo pipefail
root=$1
project_dirs="base engine tools server client bench"
allowed() {  # FOLDER → the project folders its files may include from (besides itself)
  case $1 in
    base) echo "" ;;
    engine) echo "base" ;;
    tools) echo "base engine" ;;
    server) echo "base" ;;
    client) echo "base" ;;
    bench) echo "base client" ;;
  esac
}
bad=0 checked=0
for from in $project_dirs; do
  [ -d "$root/$from" ] || continue
  ok=" $from $(allowed "$from") "
  while IFS= read -r line; do
    file=${line%%:*}
    target=$(printf '%s\n' "$line" | sed -n 's/.*#include "\([a-z_]*\)\/.*/\1/p')
    case " $project_dirs " in *" $target "*) ;; *) continue ;; esac  # absl/, slim/, google/ ...
    checked=$((checked + 1))
    if [[ $ok != *" $target "* ]]; then
      echo "$file includes from $target/, which $from/ may not: ${line#*:}"
      bad=1
    fi
  done < <(cd "$root" && grep -rn '#include "[a-z_]*/' "$from" --include='*.h' --include='*.cc' || true)
done
if [ "$checked" -eq 0 ]; then
  echo "no project includes found under $root: wrong root?" >&2
  exit 1
fi
[ "$bad" -eq 0 ] && echo "$checked project includes follow the folder rules"
exit "$bad"
