#!/usr/bin/env bash
# Run the whole test suite: unit tests, and integration tests against a real
# private Postfix, a real redis-server and a local DNS server on loopback.
# Installs what it needs (Debian packages, the Python virtualenv) idempotently.
# Extra arguments go to pytest, e.g. scripts/test.sh -k xforward
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# spamassassin: its rule files only (scan/spamassassin/ reads them); its daemon never runs.
# rspamd: for its client rspamc only (tests/controller/test_controller_rspamc.py);
# ensure_debs keeps its daemon from starting and no test starts it.
packages=(postfix redis-server publicsuffix libmail-dkim-perl opendkim-tools rspamd spamassassin)
# clamav-daemon: clamd runs privately with a signature database the tests write
# (tests/support/clamd.py); freshclam never runs.
packages+=(clamav-daemon)
# chromium, chromium-driver: the web interface's browser test (tests/controller/test_web_ui.py),
# headless through selenium and Debian's /usr/bin/chromedriver; nothing is downloaded.
packages+=(chromium chromium-driver)
if [ -f "$ROOT/scripts/test-packages.txt" ]; then
    while read -r pkg; do
        [ -n "$pkg" ] && [ "${pkg#\#}" = "$pkg" ] && packages+=("$pkg")
    done < "$ROOT/scripts/test-packages.txt"
fi
ensure_debs "${packages[@]}"
ensure_venv

cd "$ROOT"
echo "==> ruff"
"$VENV/bin/ruff" check smtpproxy policy tests bench
echo "==> pytest"
# pytest exits 5 when it collected no test: that is a failure here too.
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -q -ra "$@"
