#!/usr/bin/env bash
# The project's test command (README): every unit, oracle and end-to-end test.
# The end-to-end tests need models/ (scripts/fetch-model.sh) and ../shared/models when present.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets --locked "$@"
