# Shared by scripts/demo.sh and scripts/test.sh: idempotent installation of
# what the project needs on Debian 12. Sourced, not run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SMTPPROXY_VENV:-$ROOT/.venv}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Install Debian packages that are missing; never starts their services.
ensure_debs() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> installing Debian packages: ${missing[*]}"
    # Postfix without a system mail setup, and no service started by the packages:
    # tests run private instances of their own.
    echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
    local made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    local rc=$?
    [ -n "$made_policy" ] && as_root rm -f /usr/sbin/policy-rc.d
    return $rc
}

# The project's virtualenv with the project installed (editable) and its test tools.
ensure_venv() {
    if ! python3 -m venv --help >/dev/null 2>&1; then
        ensure_debs python3-venv
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV"
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
    if [ ! -e "$stamp" ]; then
        echo "==> installing Python dependencies"
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
        if ! "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" >"$VENV/pip.log" 2>&1; then
            cat "$VENV/pip.log" >&2
            return 1
        fi
        touch "$stamp"
    fi
}
