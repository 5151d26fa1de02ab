#!/usr/bin/env bash
# Bring the system up on loopback and show it doing its job: a private Postfix
# wired to smtpproxy, one message sent through it, the message as it arrived.
# Installs what it needs (Debian's postfix, the Python virtualenv) idempotently.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_debs postfix publicsuffix
ensure_venv
cd "$ROOT"
exec "$VENV/bin/python" scripts/demo.py
