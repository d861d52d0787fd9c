#!/bin/sh
# Compiles src/ to dist/ with the one build config (tsconfig.build.json), as `npm run build` does,
# and checks that the entry point came out. Run after `install-deps.sh build`.
set -eu
rm -rf dist
npx --no-install tsc -p tsconfig.build.json
if [ ! -f dist/main.js ]; then
  echo "build: dist/main.js was not produced" >&2
  exit 1
fi
echo "build: dist/ compiled ($(find dist -name '*.js' | wc -l) files)"
