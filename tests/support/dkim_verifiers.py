"""DKIM and ARC verifiers nobody here wrote, run on messages our proxy signed.

- ``MailDkim``: Perl's Mail::DKIM (Debian libmail-dkim-perl), DKIM and ARC
  verifiers, its DNS (Net::DNS) pointed at the local DNS test server's port.
  Debian 12's version does not verify ed25519 signatures.
- ``Opendkim``: ``opendkim-testmsg`` (Debian opendkim-tools), RSA and
  ed25519. libopendkim asks the C library's resolver, which reads
  /etc/resolv.conf and knows no port: the tool runs in a mount namespace of
  its own (``unshare -m``) where /etc/resolv.conf is bind-mounted from a file
  naming a private loopback address, and ``Port53Relay`` forwards port 53 on
  that address to the test server. Needs root (as the private Postfix does);
  the system's resolv.conf is never touched.

  opendkim-testmsg sets libopendkim's strict header checks: a message
  without Date is a "syntax error". It exits 0 when the signature the library
  picks verifies (with several, strip the others to check each one).

Both take the message as delivered (LF or CRLF line ends) and return what
the tool said; every subprocess and wait is bounded.
"""

from __future__ import annotations

import random
import select
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

PERL_VERIFIER = r"""
use strict; use warnings;
use Mail::DKIM::Verifier; use Mail::DKIM::ARC::Verifier; use Mail::DKIM::DNS; use Net::DNS::Resolver;
my ($host, $port, $mode) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => [$host], port => $port, recurse => 1, udp_timeout => 5, tcp_timeout => 5,
    retry => 2));
local $/; my $msg = <STDIN>; $msg =~ s/\r?\n/\r\n/g;
my $v = $mode eq 'arc' ? Mail::DKIM::ARC::Verifier->new() : Mail::DKIM::Verifier->new();
$v->PRINT($msg); $v->CLOSE;
print "result=", $v->result, "\n";
print "detail=", ($v->result_detail // ''), "\n";
foreach my $sig ($v->signatures) {
    print "sig ", ref($sig), " d=", ($sig->domain // ''), " s=", ($sig->selector // ''),
        " a=", ($sig->algorithm // ''), " result=", ($sig->result // ''),
        " detail=", ($sig->result_detail // ''), "\n";
}
"""


def available_mail_dkim() -> bool:
    return subprocess.run(["perl", "-MMail::DKIM::ARC::Verifier", "-MNet::DNS", "-e", "1"],
                          capture_output=True, timeout=30).returncode == 0


def available_opendkim() -> bool:
    return bool(shutil.which("opendkim-testmsg") and shutil.which("unshare"))


class MailDkim:
    def __init__(self, dns_host: str, dns_port: int):
        self.dns_host, self.dns_port = dns_host, dns_port
        self._script = Path(tempfile.mkdtemp(prefix="maildkim-")) / "verify.pl"
        self._script.write_text(PERL_VERIFIER)

    def verify(self, message: bytes, mode: str = "dkim") -> str:
        """The verifier's report: "result=pass", "detail=...", one "sig ..." line per signature."""
        out = subprocess.run(["perl", str(self._script), self.dns_host, str(self.dns_port), mode],
                             input=message, capture_output=True, timeout=60)
        return out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")


class Port53Relay:
    """UDP port 53 on a private loopback address, relayed to a DNS server's port."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.sock = None
        for _ in range(20):
            host = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(1, 250)}"
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((host, 53))
            except OSError:
                sock.close()
                continue
            self.sock, self.host = sock, host
            break
        if self.sock is None:
            raise RuntimeError("no loopback address with port 53 free")
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="port53-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if not ready:
                continue
            try:
                query, client = self.sock.recvfrom(65535)
            except OSError:
                return
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
                up.settimeout(3)
                try:
                    up.sendto(query, self.upstream)
                    answer, _ = up.recvfrom(65535)
                except OSError:
                    continue  # the client retries or times out
            self.sock.sendto(answer, client)

    def stop(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


class Opendkim:
    def __init__(self, dns_host: str, dns_port: int):
        self.relay = Port53Relay((dns_host, dns_port))
        self._dir = Path(tempfile.mkdtemp(prefix="opendkim-"))
        self.resolv = self._dir / "resolv.conf"
        # edns0: a 2048-bit RSA key record is close to the 512-octet UDP limit.
        self.resolv.write_text(f"nameserver {self.relay.host}\noptions edns0 timeout:3 attempts:2\n")

    def verify(self, message: bytes) -> tuple[int, str]:
        """(exit status, what it printed); it prints nothing when the message verifies."""
        # It reads LF text and adds the CRs itself (CRLF input is a "syntax error").
        lf = message.replace(b"\r\n", b"\n")
        out = subprocess.run(
            ["unshare", "-m", "sh", "-c",
             'mount --bind "$1" /etc/resolv.conf && exec opendkim-testmsg -t "$2"',
             "sh", str(self.resolv), str(self._dir)],
            input=lf, capture_output=True, timeout=60)
        return out.returncode, (out.stdout + out.stderr).decode(errors="replace")

    def stop(self) -> None:
        self.relay.stop()
